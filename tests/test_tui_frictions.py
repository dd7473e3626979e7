"""The smaller frictions of issue 24, each pinned: a long pipeline's Stages cell and "cancelling…"
fit their columns; j/k move in lists; G/End reach the end of Help; esc in Compare keeps the ticks
(u unticks); a checkbox's state reads without colour; after f4 the new student has the focus."""

from __future__ import annotations

import pytest
from _app_util import RunWriter, finished_run, make_app, run_async, show, wait_for

from app.widgets.style import stage_strip


@pytest.fixture
def runs(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    return d


def plain(v) -> str:
    return getattr(v, "plain", str(v))


class _NoTheme:
    theme_variables: dict = {}


def test_the_run_eta_counts_the_running_stages_own_eta():
    """Prepare took 100 s, fine-tune is 10% in and says 50 min to go, 5 stages wait: the run's ETA is
    at least those 50 min (extrapolating the time so far said ~13 min)."""
    from pathlib import Path

    from app.widgets.run_progress import run_progress
    from engine.contract import RunInfo, StageInfo

    t0 = "2026-01-01T00:00:00+00:00"
    stages = (StageInfo("prepare", "succeeded", started_at=t0),
              StageInfo("finetune", "running", step=10, total_steps=100, eta_s=3000.0, started_at=t0),
              *(StageInfo(f"s{i}") for i in range(5)))
    run = RunInfo("r", Path("r"), "running", stages, created=0.0)
    start = 1767225600.0  # t0
    done, eta = run_progress(run, start + 433.0)
    assert round(done, 3) == round(1.1 / 7, 3)
    per_stage = 433.0 / 1.1
    assert eta == 3000.0 + 5 * per_stage


def test_a_long_pipeline_folds_into_counts_and_keeps_the_running_stage():
    nine = ["succeeded"] * 5 + ["running"] + ["pending"] * 3
    assert stage_strip(_NoTheme(), nine, width=7).plain == "5✓●3○"
    assert stage_strip(_NoTheme(), nine[:7], width=7).plain == "✓✓✓✓✓●○"  # fits: one glyph per stage


@run_async
async def test_runs_cells_fit_their_columns_and_j_k_move(runs, tmp_path):
    students = ("depth", "width", "deep2")  # prepare, finetune, 3 prune, 3 distill, eval: 9 stages
    w = RunWriter(runs, "nine", students=students)
    for stage in ("prepare", "finetune", "prune-depth", "prune-width", "prune-deep2"):
        w.stage(stage, "succeeded", total_steps=None)
    w.stage("distill-depth", "running", step=3)
    finished_run(runs, "older-a")
    finished_run(runs, "older-b")
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 3, what="the runs")
        app.cancelling.add(w.root)
        app.rescan()
        key = str(w.root)
        await wait_for(pilot, lambda: plain(table.get_cell(key, "state")) == "⊘ cancelling…", what="cancelling")
        widths = {col.key.value: col.width for col in table.ordered_columns}
        for col in ("state", "stages", "progress", "run"):
            text = plain(table.get_cell(key, col))
            assert len(text) <= widths[col], (col, text, widths[col])
        assert "●" in plain(table.get_cell(key, "stages"))  # the running stage is not cut off
        assert sum(widths[c] + 2 for c in ("run", "state", "stages", "progress", "train", "val", "eta")) <= 80

        table.focus()
        table.move_cursor(row=0)
        await pilot.press("j", "j")
        assert table.cursor_row == 2
        await pilot.press("k")
        assert table.cursor_row == 1

        await pilot.press("question_mark")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        body = app.screen.query_one("#help-body")
        await pilot.pause()
        assert body.max_scroll_y > 0
        await pilot.press("G")
        assert body.scroll_y == body.max_scroll_y
        await pilot.press("g")
        assert body.scroll_y == 0
        await pilot.press("j")
        assert body.scroll_y > 0


@run_async
async def test_esc_in_compare_keeps_the_ticks(runs, tmp_path):
    finished_run(runs, "run-a")
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await show(pilot, app, "3", "CompareScreen", runs=1)
        picks = app.screen.query_one("#compare-pick")
        await wait_for(pilot, lambda: len(picks.selected) == 4, what="the students ticked")
        await pilot.press("w", "escape")
        await pilot.pause()
        assert len(picks.selected) == 4
        await pilot.press("u")
        await wait_for(pilot, lambda: not picks.selected, what="u unticks all")


@run_async
async def test_checkboxes_read_without_colour_and_f4_focuses_the_new_student(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "2", "ComposeScreen")
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        toggle = screen.query_one("#toggle-finetune")
        assert toggle.value and "▐X▌" in plain(toggle.render())
        toggle.value = False
        await pilot.pause()
        assert "▐ ▌" in plain(toggle.render())
        parallel = screen.query_one("#f-launch-parallel")
        assert not parallel.value and plain(parallel.render()) == "▐ ▌"

        await pilot.press("escape", "f4")
        await wait_for(pilot, lambda: len(screen.raw["prune"]) == 3, what="the search student")
        await pilot.pause()
        forms = screen.query("StudentForm")
        assert forms.last().student["method"] == "search"
        assert app.focused is not None and forms.last() in app.focused.ancestors


def test_placeholders_say_what_an_empty_field_gives():
    """A placeholder is never a value that looks typed in and is not what an empty field gives: the
    training ones are the schema's defaults, the scratch teacher's are llama's config defaults (the
    old "heads 8" stood where an empty field gave 32 heads)."""
    import re

    from transformers import LlamaConfig

    from app.data.form_fields import DATA, DISTILL_EXTRA, SCRATCH, TRAIN
    from engine.config.schema import DataConfig, DistillConfig

    for spec in (*TRAIN, *DISTILL_EXTRA, *DATA):
        m = re.match(r"default ([^\s;,(]+)", spec.placeholder)
        if m:
            schema = DataConfig if spec.key.startswith("data.") else DistillConfig
            default = schema.model_fields[spec.key.removeprefix("data.")].default
            assert str(default) == m.group(1) or float(default) == float(m.group(1)), (spec.key, default)
    llama = LlamaConfig()
    for spec in SCRATCH:
        m = re.match(r"empty: (\d+)", spec.placeholder)
        if spec.kind == "int" and spec.key.startswith("model.arch."):
            assert m and int(m.group(1)) == getattr(llama, spec.key.rpartition(".")[2]), spec


@run_async
async def test_the_missing_fields_are_there(runs, tmp_path, monkeypatch):
    """calibration_samples (the default 1024 made a CPU prune take 14 minutes), test_fraction,
    checkpoint_interval, [eval] tasks, and a scratch teacher's max_position_embeddings and
    tie_word_embeddings have fields."""
    monkeypatch.chdir(tmp_path)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "2", "ComposeScreen")
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        screen.query_one("#f-data-test-fraction").value = "0.05"
        screen.query_one("#f-finetune-checkpoint-interval").value = "20"
        calib = [i for i in screen.query("StudentForm Input") if i.spec.key == "calibration_samples"]
        assert len(calib) == 2  # the new form's depth and width students
        calib[0].value = "64"
        await pilot.pause()
        assert screen.raw["data"]["test_fraction"] == 0.05 and screen.raw["finetune"]["checkpoint_interval"] == 20
        assert screen.raw["prune"][0]["calibration_samples"] == 64
        # [eval] tasks and limit; a scratch teacher's max_position_embeddings and tied embeddings
        screen.query_one("#f-eval-tasks").value = "hellaswag, experiments/tasks/stdlib_lastword"
        screen.query_one("#f-eval-limit").value = "200"
        screen.query_one("#f-model-arch-max-position-embeddings").value = "4096"
        screen.query_one("#f-model-arch-tie-word-embeddings").value = True
        await pilot.pause()
        assert screen.raw["eval"]["tasks"] == ["hellaswag", "experiments/tasks/stdlib_lastword"]
        assert screen.raw["eval"]["limit"] == 200
        assert screen.raw["model"]["arch"] == {"max_position_embeddings": 4096, "tie_word_embeddings": True}


def _drawn(widget) -> list[str]:
    return ["".join(seg.text for seg in widget.render_line(y)) for y in range(widget.size.height)]


def _x_ticks(widget) -> str:
    """The x-axis tick labels: the line under the plot's bottom frame."""
    lines = _drawn(widget)
    bottom = max(i for i, line in enumerate(lines) if "└" in line)
    return lines[bottom + 1].strip()


@run_async
async def test_run_detail_panels_share_one_step_axis_and_log_y_says_so(runs, tmp_path):
    """Train loss at steps 1-20 and validation at 5-20: both panels span 1-20 (the validation
    panel spanned 5-20, so its points sat under other train steps); `y` writes "log y"."""
    finished_run(runs, "one", students=("depth",))
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        table = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 1)
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunDetailScreen")
        screen = app.screen
        await wait_for(pilot, lambda: screen.stage_name is not None, what="a stage")
        stages = screen.query_one("#stage-list")
        await wait_for(pilot, lambda: "finetune" in stages._names, what="the stage list")
        stages.highlighted = stages._names.index("finetune")
        await wait_for(pilot, lambda: screen.stage_name == "finetune", what="finetune picked")
        train, val = screen.query_one("#loss-chart"), screen.query_one("#val-chart")
        await wait_for(pilot, lambda: any("└" in line for line in _drawn(train))
                       and any("└" in line for line in _drawn(val)) and len(val.curves[0].ys) == 4,
                       what="both panels of finetune")
        assert _x_ticks(train) == _x_ticks(val)
        assert "log y" not in "".join(_drawn(train))
        await pilot.press("y")
        await wait_for(pilot, lambda: "log y" in "".join(_drawn(train)), what="the log indicator")


@pytest.mark.parametrize("gpu", [False, True])
@run_async
async def test_a_new_form_takes_float32_without_a_gpu(runs, tmp_path, monkeypatch, gpu):
    import app.screens.compose as compose

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(compose, "has_nvidia_gpu", lambda: gpu)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "2", "ComposeScreen")
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        assert screen.raw["model"]["dtype"] == ("bfloat16" if gpu else "float32")
        assert screen.query_one("#f-model-dtype").value == screen.raw["model"]["dtype"]


@run_async
async def test_the_field_an_error_names_is_marked(runs, tmp_path, monkeypatch):
    """`prune[depth].num_layers: ...` marks the depth student's layers field; the form's own keys
    (finetune.steps) their field; fixed, the mark goes."""
    from _app_util import teacher_dir

    monkeypatch.chdir(tmp_path)
    teacher = teacher_dir(tmp_path)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "2", "ComposeScreen")
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        screen.query_one("#f-model-path").value = str(teacher)
        depth = screen.query("StudentForm").first()
        layers = next(w for w in depth.query(".fields > *") if getattr(w, "spec", None) and w.spec.key == "num_layers")
        layers.value = "-1"
        await wait_for(pilot, lambda: layers.has_class("-bad-field"), what="the depth student's layers marked")
        assert "prune[depth].num_layers" in screen.validation.message
        layers.value = "2"
        steps = screen.query_one("#f-finetune-steps")
        steps.value = "0"
        await wait_for(pilot, lambda: steps.has_class("-bad-field") and not layers.has_class("-bad-field"),
                       what="finetune.steps marked, the layers not")
        steps.value = "5"
        await wait_for(pilot, lambda: "steps" not in screen.validation.message and not steps.has_class("-bad-field"),
                       what="the mark gone once fixed")
        assert len(screen.query(".-bad-field")) <= 1  # at most the field the next message names


@run_async
async def test_m_shows_the_tabs_full_screen(runs, tmp_path):
    finished_run(runs, "run-a")
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "3", "CompareScreen", runs=1)
        await pilot.press("w")
        tabs = screen.query_one("#compare-tabs")
        await pilot.pause()
        assert tabs.size.height <= 10
        await pilot.press("m")
        await pilot.pause()
        assert screen.maximized is tabs and tabs.size.height > 15
        await pilot.press("escape")
        await pilot.pause()
        assert screen.maximized is None
        await pilot.press("m", "m")
        assert screen.maximized is None


@run_async
async def test_a_new_forms_students_are_sized_from_a_small_teacher(runs, tmp_path, monkeypatch):
    """The new form's students (keep 16 layers; ffn 9216, hidden 3072) cannot work on a 4-layer,
    ffn-128 teacher: once its config is read they become half of it, and validate; a student the
    user edited keeps the user's numbers."""
    from _app_util import teacher_dir

    monkeypatch.chdir(tmp_path)
    teacher = teacher_dir(tmp_path)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "2", "ComposeScreen")
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        await pilot.press("f2")  # a third student, edited by the user below
        await wait_for(pilot, lambda: len(screen.raw["prune"]) == 3)
        edited = screen.query("StudentForm").last()
        next(w for w in edited.query(".fields > *") if getattr(w, "spec", None) and w.spec.key == "num_layers").value = "9"
        screen.query_one("#f-model-path").value = str(teacher)
        await wait_for(pilot, lambda: screen.raw["prune"][0].get("num_layers") == 2
                       and screen.raw["prune"][1].get("ffn_hidden_size") == 64, what="the students resized")
        assert "hidden_size" not in screen.raw["prune"][1]
        assert screen.raw["prune"][2]["num_layers"] == 9  # the user's: validation says it does not fit
        await wait_for(pilot, lambda: "prune[depth2].num_layers" in screen.validation.message, what="its message")


@run_async
async def test_every_students_error_is_said_and_marked(runs, tmp_path, monkeypatch):
    """`check` stops at its first error; the form also names (and marks) every other student's."""
    from _app_util import teacher_dir

    monkeypatch.chdir(tmp_path)
    teacher = teacher_dir(tmp_path)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "2", "ComposeScreen")
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        depth, width = screen.query("StudentForm")

        def control(form, key):
            return next(w for w in form.query(".fields > *") if getattr(w, "spec", None) and w.spec.key == key)

        control(depth, "num_layers").value = "9"
        control(width, "ffn_hidden_size").value = "500"
        screen.query_one("#f-model-path").value = str(teacher)
        await wait_for(pilot, lambda: control(depth, "num_layers").has_class("-bad-field")
                       and control(width, "ffn_hidden_size").has_class("-bad-field"), what="both marked")
        assert "prune[depth].num_layers" in screen.validation.message
        assert "also: prune[width].ffn_hidden_size" in str(screen.query_one("#compose-validation").render())


@run_async
async def test_tab_never_leaves_compose_without_a_field(runs, tmp_path, monkeypatch):
    """shift+tab from the first field went to the form's scroll container: nothing visible had the
    focus, and the digit typed next switched screens. Tab and shift+tab stop at fields and buttons
    only (from the first field: round to the Launch button, shown focused)."""
    monkeypatch.chdir(tmp_path)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "2", "ComposeScreen")
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        screen.query_one("#f-name").focus()
        await pilot.press("shift+tab")
        assert app.focused is not None and app.focused.id == "launch"
        await pilot.press("tab")  # round again to the first field (not the form), where a digit types
        assert app.focused.id == "f-name"
        await pilot.press("3")
        assert app.current_mode == "compose" and app.focused.value.endswith("3")
