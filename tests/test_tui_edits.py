"""Compose never loses an edit: a save does not write over a file an editor changed (reload,
overwrite keeping the editor's changes, or keep both), and ctrl+n, ctrl+o and Edit copy ask before
they drop unsaved form edits, as quitting does."""

from __future__ import annotations

import pytest
from _app_util import finished_run, make_app, run_async, show, wait_for

from app.data.disk_edits import _ABSENT, beside, merge, overwrite_text

TOML = """# an experiment (this comment must survive)
name = "tiny"
[model]
init = "scratch"
arch = {model_type = "llama", hidden_size = 64, intermediate_size = 128, num_hidden_layers = 4, num_attention_heads = 4, num_key_value_heads = 2}
tokenizer_train_vocab = 512
[data]
dataset = "builtin:stdlib-docs"
seq_length = 32
[finetune]
steps = 7
global_batch_size = 4
micro_batch_size = 4
[[prune]]
name = "d"
method = "depth"
drop_layers = [1, 2]
"""


@pytest.fixture
def runs(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    return d


def test_merge_keeps_the_editors_changes_the_form_did_not_make():
    base = {"a": 1, "b": 2, "t": {"x": 1, "y": 1}, "prune": [{"name": "d", "n": 1}]}
    ours = {"a": 10, "b": 2, "t": {"x": 5, "y": 1}, "prune": [{"name": "d", "n": 1}]}  # the form: a, t.x
    theirs = {"a": 1, "b": 3, "t": {"x": 1, "y": 7, "z": 9}, "new": "kept",  # the editor: b, t.y, t.z, new
              "prune": [{"name": "d", "n": 1, "calibration_samples": 8}]}
    assert merge(base, ours, theirs) == {"a": 10, "b": 3, "t": {"x": 5, "y": 7, "z": 9}, "new": "kept",
                                         "prune": [{"name": "d", "n": 1, "calibration_samples": 8}]}
    assert merge({"a": 1}, {"a": 2}, {"a": 3}) == {"a": 2}  # both changed one value: the form's
    assert merge({"a": 1, "b": 1}, {"a": 1, "b": 1}, {"b": 1}) == {"b": 1}  # the editor deleted a
    assert merge(_ABSENT, _ABSENT, 5) == 5
    text = overwrite_text({"name": "n", "steps": 2}, 'name = "n"\nsteps = 1\n', '# mine\nname = "n"\nsteps = 1\nextra = 1\n')
    assert text == '# mine\nname = "n"\nsteps = 2\nextra = 1\n'


def test_keep_both_goes_to_a_free_name_beside(tmp_path):
    (tmp_path / "a.toml").write_text("")
    (tmp_path / "a-2.toml").write_text("")
    assert beside(tmp_path / "a.toml") == tmp_path / "a-3.toml"


async def loaded(app, pilot, src):
    screen = await show(pilot, app, "2", "ComposeScreen")
    await wait_for(pilot, screen.form_ready.is_set, what="the form")
    screen.load_file(src)
    await wait_for(pilot, lambda: screen.raw.get("name") == "tiny" and screen.form_ready.is_set()
                   and screen.query("#f-finetune-steps"), what="loaded")
    return screen


async def edit_steps(screen, pilot, value: str) -> None:
    screen.query_one("#f-finetune-steps").value = value
    await wait_for(pilot, lambda: screen.app.compose_dirty, what="an edit")


async def save_answering(app, pilot, key: str) -> None:
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: type(app.screen).__name__ == "ChoiceScreen", what="the file-changed dialog")
    await pilot.press(key)
    await wait_for(pilot, lambda: type(app.screen).__name__ == "ComposeScreen", what="the dialog gone")


@run_async
async def test_save_does_not_write_over_an_editors_changes(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "experiments" / "tiny.toml"
    src.parent.mkdir()
    src.write_text(TOML)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await loaded(app, pilot, src)
        await edit_steps(screen, pilot, "9")
        # an editor changes the file meanwhile: a comment, a key the form has, a key it has no field for
        editor = TOML.replace("# an experiment", "# edited in vim\n# an experiment").replace(
            "seq_length = 32", "seq_length = 48\nworkers = 2")
        src.write_text(editor)

        await save_answering(app, pilot, "o")  # overwrite: the form's edit and the editor's, together
        await wait_for(pilot, lambda: "steps = 9" in src.read_text(), what="saved")
        text = src.read_text()
        assert "# edited in vim" in text and "seq_length = 48" in text and "workers = 2" in text
        await wait_for(pilot, lambda: screen.query_one("#f-data-seq-length").value == "48"
                       and not app.compose_dirty, what="the form showing the merged file")

        await edit_steps(screen, pilot, "11")
        src.write_text(src.read_text().replace("workers = 2", "workers = 3"))
        before = src.read_text()
        await save_answering(app, pilot, "k")  # keep both: the form goes beside it
        other = src.with_name("tiny-2.toml")
        await wait_for(pilot, other.exists, what="the second file")
        assert src.read_text() == before and "steps = 11" in other.read_text()
        assert screen.query_one("#compose-path").value == str(other)

        src.write_text(before.replace("steps = 9", "steps = 5"))
        screen.query_one("#compose-path").value = str(src)
        await edit_steps(screen, pilot, "12")
        await save_answering(app, pilot, "r")  # reload: the file as the editor left it
        await wait_for(pilot, lambda: screen.query_one("#f-finetune-steps").value == "5", what="reloaded")
        assert "steps = 5" in src.read_text() and not app.compose_dirty

        # unchanged on disk since the form read it: saved without a question
        await edit_steps(screen, pilot, "6")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "steps = 6" in src.read_text(), what="a plain save")
        assert type(app.screen).__name__ == "ComposeScreen"


@run_async
async def test_new_open_and_edit_copy_ask_before_dropping_edits(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    finished_run(runs, "base")
    src = tmp_path / "experiments" / "tiny.toml"
    src.parent.mkdir()
    src.write_text(TOML)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await loaded(app, pilot, src)
        await edit_steps(screen, pilot, "9")

        async def asked(key: str, answer: str) -> None:
            await pilot.press(key)
            await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", what=f"{key} asking")
            await pilot.press(answer)
            await wait_for(pilot, lambda: type(app.screen).__name__ != "ConfirmScreen", what="the answer")

        await asked("ctrl+n", "n")  # keep
        await asked("ctrl+o", "n")
        assert screen.raw["name"] == "tiny" and screen.raw["finetune"]["steps"] == 9 and app.compose_dirty

        await pilot.press("escape", "1")
        await wait_for(pilot, lambda: app.current_mode == "runs")
        table = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 1)
        await asked("e", "n")  # Edit copy: Compose is shown, still with the edits
        assert app.current_mode == "compose" and screen.raw["finetune"]["steps"] == 9

        await asked("ctrl+n", "y")  # discard
        await wait_for(pilot, lambda: screen.raw.get("name") == "my-experiment", what="a new experiment")
        assert not app.compose_dirty


@run_async
async def test_a_change_on_disk_is_said_before_saving(runs, tmp_path, monkeypatch):
    """The open file is watched: an editor's save is said at once (a warning), not only at ctrl+s;
    the form's own saves are not."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "experiments" / "tiny.toml"
    src.parent.mkdir()
    src.write_text(TOML)
    app = make_app(runs, tmp_path)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        screen = await loaded(app, pilot, src)
        await edit_steps(screen, pilot, "9")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "steps = 9" in src.read_text() and not app.compose_dirty, what="saved")
        screen._watch_disk()  # (the timer calls it every DISK_WATCH_S; called here, the test needs no clock)
        await pilot.pause()
        assert not [n for n in app._notifications if "changed on disk" in n.message]
        src.write_text(src.read_text() + "# an editor was here\n")
        screen._watch_disk()
        await wait_for(pilot, lambda: [n for n in app._notifications if "changed on disk" in n.message],
                       what="the warning")
