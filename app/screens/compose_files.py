"""Compose's files: save, launch, open, new, load (a run's config as a copy), and a file changed on
disk meanwhile (an editor saved it: reload, overwrite or keep both). A mixin of ComposeScreen, whose
form state (raw, source_text, disk, validation) it reads and sets."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual import work
from textual.widgets import Input

from app.data.compose import Validation, experiment_path, fresh_name, to_toml
from app.widgets.compose.save_state import SaveState
from engine.contract import RunLayout


class ComposeFiles:
    """The file side of ComposeScreen (see its __init__ for the state)."""

    raw: dict[str, Any]
    source_text: str | None
    disk: tuple[Path, str] | None
    _disk_seen: tuple[int, int] | None
    validation: Validation | None
    # and the screen's set_experiment, _fresh and _default_path

    def _watch_disk(self) -> None:
        """Say so as soon as the open file changes on disk (an editor saved it), not only at the next
        ctrl+s (which then asks: reload, overwrite or keep both). A stat every DISK_WATCH_S; the
        (small) file is read only when its stat changed."""
        if self.disk is None or not self.is_current:
            return
        path, text = self.disk
        try:
            st = path.stat()
        except OSError:
            return
        key = (st.st_mtime_ns, st.st_size)
        if key == self._disk_seen:
            return
        self._disk_seen = key
        try:
            changed = path.read_text(encoding="utf-8") != text
        except OSError:
            return
        if changed:
            self.notify(f"{path} changed on disk; ctrl+s asks whether to reload it, overwrite it or keep both",
                        severity="warning", timeout=8)

    # ---- files -----------------------------------------------------------------------------------
    def _path(self) -> Path:
        return Path(self.query_one("#compose-path", Input).value.strip() or self._default_path())

    def action_save(self) -> None:
        self._save(self._path(), copy.deepcopy(self.raw), launch=False)

    def _changed_on_disk(self, path: Path, raw: dict[str, Any], launch: bool, disk_text: str) -> None:
        """The file is not what the form last read or wrote (an editor saved it): ask what to do."""
        from app.data.disk_edits import beside, overwrite_text
        from app.screens.choice import ChoiceScreen

        base = self.disk[1] if self.disk is not None and self.disk[0] == path else self.source_text

        def answered(answer: str | None) -> None:
            if answer == "reload":
                self.load_file(path)
            elif answer == "overwrite":
                self._save(path, raw, launch, text=overwrite_text(raw, base, disk_text), reload=True)
            elif answer == "both":
                other = beside(path)
                self.query_one("#compose-path", Input).value = str(other)
                self._save(other, raw, launch)
            else:
                self.notify(f"not saved: {path} is as the editor left it", severity="warning")

        known = self.disk is not None and self.disk[0] == path
        self.app.push_screen(ChoiceScreen(
            f"{path} {'changed on disk since the form read it' if known else 'already exists'}.\n"
            "Reload it (the form's edits are dropped), overwrite it with the form (what the editor changed "
            "that the form did not is kept), or keep both (the form goes to a new file beside it)?",
            [("r", "reload", "reload"), ("o", "overwrite", "overwrite"), ("k", "keep both", "both")]), answered)

    def _text(self, raw: dict[str, Any]) -> str:
        return to_toml(raw, self.source_text)

    def action_launch(self) -> None:
        v = self.validation
        if v is None or not v.ok:
            self.notify(f"cannot launch: {v.message if v else 'still validating'}", severity="error")
            return
        self._save(self._path(), copy.deepcopy(self.raw), launch=True)

    @work(thread=True, group="save", name="save experiment")
    def _save(self, path: Path, raw: dict[str, Any], launch: bool, text: str | None = None,
              reload: bool = False) -> None:
        """Write the form (or `text`, already merged with the file on disk) to `path`; a file that
        changed on disk since the form read it is not written over without asking."""
        from app.data.compose import check_hub_ids
        from app.data.disk_edits import changed_on_disk
        from engine.contract import write_atomic

        if launch:  # a hub teacher must be reachable: otherwise the run fails seconds after it starts
            problem, _note = check_hub_ids(raw, reach=True)
            if problem:
                self.app.call_from_thread(self.notify, f"cannot launch: {problem}", severity="error", timeout=10)
                return

        if text is None:
            disk_text = changed_on_disk(path, self.disk)
            if disk_text is not None:
                self.app.call_from_thread(self._changed_on_disk, path, raw, launch, disk_text)
                return
        try:
            text = self._text(raw) if text is None else text
            write_atomic(path, text)
        except (OSError, TypeError, ValueError) as e:
            self.app.call_from_thread(self.notify, f"cannot save {path}: {e}", severity="error")
            return
        self.app.call_from_thread(self._saved, path, launch, str(raw.get("name") or ""), text, reload)

    def _saved(self, path: Path, launch: bool, name: str, text: str = "", reload: bool = False) -> None:
        self.disk = (path, text)
        if reload:  # merged with the editor's changes: the form shows what the file now holds
            self.load_file(path)
        self.app.compose_dirty = False
        v = self.validation
        self.query_one(SaveState).saved(v is not None and v.ok)
        if launch:
            from app.messages import OpenRun
            from app.screens.actions import launch as launch_run

            run_dir = self.app.runs_dir / name  # `run --runs-dir` puts it there
            launch_run(self.app, path, self.app.runs_dir, f"launch {path.name}",
                       then=lambda: self.app.post_message(OpenRun(run_dir)))

    async def unless_unsaved(self, what: str, then: Callable[[], Any]) -> None:
        """Do `then` now or, while the form has unsaved edits, once the user agreed to drop them
        (as quitting does): ctrl+n, ctrl+o and Edit copy would otherwise throw them away."""
        if not self.app.compose_dirty:
            result = then()
            if isinstance(result, Awaitable):
                await result
            return
        from app.screens.confirm import ConfirmScreen

        def answered(yes: bool | None) -> None:
            if yes:
                self.call_later(then)
            else:
                self.notify("kept the unsaved edits (ctrl+s saves them)")

        self.app.push_screen(ConfirmScreen(f"Compose has unsaved changes. Discard them and {what}?",
                                           yes="Discard", no="Keep"), answered)

    async def action_open(self) -> None:
        await self.unless_unsaved("open another file", self._open)

    def _open(self) -> None:
        from app.screens.open_file import OpenFileScreen

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.load_file(path)

        self.app.push_screen(OpenFileScreen(self.app.experiments_dir, self.app.runs_dir), chosen)

    def load_file(self, path: Path, as_copy: bool = False) -> None:
        self._load(Path(path), as_copy)

    @work(thread=True, group="load", name="load experiment")
    def _load(self, path: Path, as_copy: bool) -> None:
        from app.data.compose import read_experiment_file
        from engine.config import ConfigError

        try:
            raw = read_experiment_file(path)
            text = path.read_text(encoding="utf-8")
        except (ConfigError, OSError) as e:
            self.app.call_from_thread(self.notify, str(e), severity="error")
            return
        self.app.call_from_thread(self._loaded, raw, path, text, as_copy)

    async def _loaded(self, raw: dict[str, Any], path: Path, text: str, as_copy: bool) -> None:
        # a run's resolved config is edited as a copy under a fresh name (launching it must not go
        # into the run it came from); saving goes to experiments/NAME.toml
        is_run_config = as_copy or (path.name == RunLayout.EXPERIMENT and RunLayout(path.parent).status_file.exists())
        note = ""
        if is_run_config:
            old = str(raw.get("name") or path.parent.name)
            raw["name"] = fresh_name(old, self._name_taken)
            note = f" as a copy named {raw['name']}; saves to {self.app.experiments_dir}/"
        await self.set_experiment(raw, None if is_run_config else path, None if is_run_config else text)
        self.disk = None if is_run_config else (path, text)
        self.app.compose_dirty = False
        self.notify(f"loaded {path}{note}")

    def _name_taken(self, name: str) -> bool:
        return (self.app.runs_dir / name).exists() or experiment_path(name, self.app.experiments_dir).exists()

    async def action_new(self) -> None:
        await self.unless_unsaved("start a new experiment", self._new)

    async def _new(self) -> None:
        self.app.compose_dirty = False
        self.disk = None
        await self.set_experiment(self._fresh(), None)
