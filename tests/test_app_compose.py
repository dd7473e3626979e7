"""Compose at 80x24 (issue 15): saving keeps the form visible, the Launch section fits, search
students have fields and round-trip through the file, and micro_batch_size defaults to "auto"."""

from __future__ import annotations

import shutil
from pathlib import Path

from _app_util import make_app, run_async, teacher_dir, wait_for
from textual.geometry import Region

from app.data.compose import new_experiment
from app.data.form_fields import SEARCH, format_field, parse_field
from engine.config import dumps_toml, load_experiment, loads_experiment

SEARCH_TOML = Path(__file__).resolve().parents[1] / "experiments" / "search.toml"
WIDTH, HEIGHT = 80, 24


async def open_compose(app, pilot):
    await pilot.press("2")
    await wait_for(pilot, lambda: type(app.screen).__name__ == "ComposeScreen", what="Compose")
    screen = app.screen
    await wait_for(pilot, screen.form_ready.is_set, what="the form")
    await wait_for(pilot, lambda: screen.validation is not None, what="the first validation")
    return screen


def control(form, key: str):
    return next(c for c in form.query("FieldInput, FieldSelect, FieldCheck") if c.spec.key == key)


def keys_of(form) -> list[str]:
    return [c.spec.key for c in form.query(".student-targets FieldInput, .student-targets FieldSelect")]


def first_line(widget) -> str:
    """What the widget draws on its first row, at the size the layout gave it."""
    return widget.render_lines(Region(0, 0, widget.size.width, 1))[0].text


def save_state(screen) -> str:
    return str(screen.query_one("#compose-save-state").render())


# ---- saving -----------------------------------------------------------------------------------------


@run_async
async def test_saving_twice_leaves_the_form_visible(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(tmp_path / "runs", tmp_path)
    path = tmp_path / "experiments" / "mine.toml"
    async with app.run_test(size=(WIDTH, HEIGHT), notifications=True) as pilot:
        screen = await open_compose(app, pilot)
        screen.query_one("#f-name").value = "mine"
        for steps in ("31", "32"):  # the new form does not validate (no teacher): the long-message case
            screen.query_one("#f-finetune-steps").value = steps
            await wait_for(pilot, lambda: app.compose_dirty, what="an edit")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: path.exists() and not app.compose_dirty, what="saved")
        await pilot.pause()
        # at most one notification, of one line (a toast is its text plus a row of padding above and below)
        assert len(app._notifications) <= 1
        for toast in screen.query("Toast"):
            assert toast.size.height <= 3, str(toast.render())
        assert save_state(screen) == "saved (invalid)"  # the form itself says so; the line above says why
        screen.query_one("#f-name").value = "mine2"
        await wait_for(pilot, lambda: save_state(screen) == "file", what="an edit after the save")


# ---- the Launch section at 80 columns -------------------------------------------------------------


@run_async
async def test_launch_section_and_every_label_fit_80_columns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(tmp_path / "runs", tmp_path)
    async with app.run_test(size=(WIDTH, HEIGHT)) as pilot:
        screen = await open_compose(app, pilot)
        await pilot.press("f4")  # a search student: the most fields
        await wait_for(pilot, lambda: len(screen.query("StudentForm .student-targets Label")) >= 10,
                       what="the search student's fields")
        grid = screen.query_one("#launch-fields")

        def launch_in_view() -> bool:
            # scrolled again on each try: a layout pass after the first scroll (the student's fields still
            # arriving) can move the section back out, and one scroll then never brings it in (seen in CI)
            grid.scroll_visible(animate=False, immediate=True)
            return screen.query_one("#f-launch-parallel").region.bottom <= HEIGHT - 4

        await wait_for(pilot, launch_in_view, what="the Launch section in view")
        await pilot.pause()
        cells = list(grid.children)
        assert len(cells) == 6  # GPUs, strategy, parallel: a label and a control each
        for cell in cells:
            assert cell.region.width and cell.region.right <= WIDTH, (cell, cell.region)
            assert "…" not in first_line(cell), (cell, first_line(cell))
        check = screen.query_one("#f-launch-parallel")
        assert first_line(check).strip() == "▐ ▌"  # the whole box (off: no X), not "▐ …"
        assert str(screen.query_one("#f-launch-strategy").render()) in first_line(screen.query_one("#f-launch-strategy"))
        # every label of the form shows in full on its one row (none wraps out of its 16 columns)
        for label in screen.query(".fields Label"):
            if not all(node.display for node in label.ancestors_with_self if node is not app):
                continue  # a hidden part (the scratch teacher's fields)
            text = str(label.render())
            assert first_line(label).rstrip() == text, f"label '{text}' is cut to '{first_line(label).rstrip()}'"


# ---- search students -------------------------------------------------------------------------------


def test_size_and_micro_batch_fields_parse_what_the_schema_takes():
    assert parse_field("size", "0.6") == 0.6 and parse_field("size", "81_000_000") == 81_000_000
    assert parse_field("size", "4.5B") == "4.5B"  # the engine parses the suffix
    for value in (0.5, 81_000_000, "1.5M"):
        assert parse_field("size", format_field("size", value)) == value
    assert parse_field("auto_int", "auto") == "auto" and parse_field("auto_int", " Auto ") == "auto"
    assert parse_field("auto_int", "8") == 8 and parse_field("auto_int", "big") == "big"  # the schema says why
    assert {s.key for s in SEARCH} >= {"target_params", "target_memory_gb", "memory_seq_length", "memory_batch_size",
                                       "tolerance", "axes", "top_k", "score", "score_steps", "score_task"}


@run_async
async def test_compose_a_search_student_save_and_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher = teacher_dir(tmp_path)
    app = make_app(tmp_path / "runs", tmp_path)
    path = tmp_path / "experiments" / "my-experiment.toml"
    async with app.run_test(size=(WIDTH, HEIGHT)) as pilot:
        screen = await open_compose(app, pilot)
        screen.query_one("#f-model-path").value = teacher.name
        depth, width = screen.query("StudentForm")
        control(depth, "num_layers").value = "2"
        control(width, "ffn_hidden_size").value = "64"
        control(width, "hidden_size").value = "32"
        assert "num_layers" in keys_of(width)  # width may drop layers too
        await pilot.press("f4")
        await wait_for(pilot, lambda: len(screen.query("StudentForm")) == 3, what="the search student")
        search = list(screen.query("StudentForm"))[2]
        await wait_for(pilot, lambda: len(keys_of(search)) == len(SEARCH), what="its fields")
        assert search.student == {"name": "search", "method": "search", "target_params": 0.5}
        assert control(search, "target_params").value == "0.5"
        # 0.5 of this small teacher needs finer steps than 64: the engine's message, then a fix
        await wait_for(pilot, lambda: "prune[search].target_params" in screen.validation.message,
                       what="the search is checked against the teacher")
        control(search, "hidden_multiple").value = "16"
        control(search, "ffn_multiple").value = "16"
        control(search, "tolerance").value = "0.05"
        control(search, "axes").value = "num_layers, hidden_size, ffn_hidden_size"
        control(search, "top_k").value = "3"
        control(search, "score").value = "loss"
        await wait_for(pilot, lambda: screen.validation.ok, what="a valid experiment")
        await wait_for(pilot, lambda: "x smaller" in str(search.query_one(".student-size").render()),
                       what="the search student's size")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: path.exists() and save_state(screen) == "saved ✓", what="saved")
        exp = load_experiment(path)
        p = exp.prune_by_name("search")
        assert (p.method, p.target_params, p.tolerance, p.top_k, p.score) == ("search", 0.5, 0.05, 3, "loss")
        assert (p.hidden_multiple, p.ffn_multiple) == (16, 16)

        # another method drops the keys it rejects, and shows its own fields
        control(search, "method").value = "depth"
        await wait_for(pilot, lambda: keys_of(search) == ["drop_layers", "num_layers", "selection", "calibration_samples"],
                       what="the depth fields")
        assert "target_params" not in search.student and "hidden_multiple" not in search.student
        control(width, "method").value = "search"
        await wait_for(pilot, lambda: len(keys_of(width)) == len(SEARCH), what="the search fields")
        assert "ffn_hidden_size" not in width.student and "num_layers" not in width.student


@run_async
async def test_load_search_toml_fills_the_search_fields_and_saves_it_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "experiments" / "search.toml"
    src.parent.mkdir()
    shutil.copy(SEARCH_TOML, src)
    app = make_app(tmp_path / "runs", tmp_path)
    async with app.run_test(size=(WIDTH, HEIGHT)) as pilot:
        screen = await open_compose(app, pilot)
        screen.load_file(src)
        await wait_for(pilot, lambda: screen.raw.get("name") == "search" and screen.form_ready.is_set(),
                       what="loaded")
        form = next(f for f in screen.query("StudentForm") if f.student["name"] == "search")
        await wait_for(pilot, lambda: len(keys_of(form)) == len(SEARCH), what="the search student's fields")
        shown = {key: control(form, key).value for key in keys_of(form)}
        assert control(form, "method").value == "search"
        assert shown["target_params"] == "0.5" and shown["tolerance"] == "0.03" and shown["top_k"] == "6"
        assert shown["axes"] == "num_layers, hidden_size, ffn_hidden_size"
        assert shown["hidden_multiple"] == "12" and shown["ffn_multiple"] == "32"
        assert shown["score"] == "loss" and shown["target_memory_gb"] == "" and shown["score_task"] == ""
        await wait_for(pilot, lambda: screen.validation is not None and screen.validation.ok,
                       what="search.toml validates in Compose")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: save_state(screen) == "saved ✓", what="saved")
    assert src.read_text() == SEARCH_TOML.read_text()  # nothing edited: the file round-trips as it was


# ---- micro_batch_size = "auto" ----------------------------------------------------------------------


def test_a_new_experiment_micro_batch_is_auto():
    raw = new_experiment()
    raw["model"]["path"] = "org/model"
    exp = loads_experiment(dumps_toml(raw))
    assert exp.finetune.micro_batch_size == "auto" and exp.distill.micro_batch_size == "auto"


@run_async
async def test_micro_batch_takes_a_number_or_auto(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher = teacher_dir(tmp_path)
    app = make_app(tmp_path / "runs", tmp_path)
    path = tmp_path / "experiments" / "my-experiment.toml"
    async with app.run_test(size=(WIDTH, HEIGHT)) as pilot:
        screen = await open_compose(app, pilot)
        ft, dist = screen.query_one("#f-finetune-micro-batch-size"), screen.query_one("#f-distill-micro-batch-size")
        assert ft.value == dist.value == "auto"
        screen.query_one("#f-model-path").value = teacher.name
        depth, width = screen.query("StudentForm")
        control(depth, "num_layers").value = "2"
        control(width, "ffn_hidden_size").value = "64"
        control(width, "hidden_size").value = "32"
        await wait_for(pilot, lambda: screen.validation.ok, what="a valid experiment")
        dist.value = "big"
        await wait_for(pilot, lambda: "distill.micro_batch_size" in screen.validation.message, what="the error")
        assert '"big" is neither a number >= 1 nor "auto"' in screen.validation.message
        dist.value = "8"
        await wait_for(pilot, lambda: screen.validation.ok and screen.raw["distill"]["micro_batch_size"] == 8,
                       what="a number")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: path.exists() and save_state(screen) == "saved ✓", what="saved")
    exp = load_experiment(path)
    assert exp.finetune.micro_batch_size == "auto" and exp.distill.micro_batch_size == 8
