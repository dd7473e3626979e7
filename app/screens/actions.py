"""Cancel and resume, shared by the Runs and Run detail screens. Engine commands run in thread
workers owned by the app, so they finish even when the screen that asked is closed."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from textual.app import App

from app.data.launch import CommandResult, cancel_run, export_student, launch_detached
from app.screens.confirm import ConfirmScreen
from engine.contract import RunInfo, RunLayout


def request_cancel(app: App, run: RunInfo | None) -> None:
    if run is None:
        return
    if run.state != "running":
        app.notify(f"{run.name} is not running ({run.state})", severity="warning")
        return
    if run.path in getattr(app, "cancelling", ()) or getattr(run, "cancelling", False):
        _request_cancel_now(app, run)
        return
    question = (f"Cancel run [b]{run.name}[/b]?\n\nTraining finishes its step and saves a checkpoint, however "
                "long the write takes, and resume continues from it. Cancel again to stop at once.")

    def answered(yes: bool | None) -> None:
        if yes:
            app.notify(f"cancelling {run.name}…")
            cancelling = getattr(app, "cancelling", None)
            if cancelling is not None:  # shown as "cancelling…" until the run stops
                cancelling.add(run.path)
                app.runs_signal.publish(app.runs)
            app.run_worker(partial(_cancel, app, run.path), thread=True, group="engine", name=f"cancel {run.name}")

    app.push_screen(ConfirmScreen(question, yes="Cancel run", no="Keep running"), answered)


def _request_cancel_now(app: App, run: RunInfo) -> None:
    """A second cancel: the user decides to stop now, not a timer."""
    where = f" ({run.note})" if getattr(run, "note", None) else ""
    question = (f"Run [b]{run.name}[/b] is already cancelling{where}.\n\nStop it [b]now[/b]? Its processes are "
                "killed; the steps since its last checkpoint are lost.")

    def answered(yes: bool | None) -> None:
        if yes:
            app.notify(f"stopping {run.name} now…")
            app.run_worker(partial(_cancel, app, run.path, True), thread=True, group="engine",
                           name=f"cancel now {run.name}")

    app.push_screen(ConfirmScreen(question, yes="Stop now", no="Let it save"), answered)


def _cancel(app: App, path: Path, now: bool = False) -> None:
    result = cancel_run(path, now=now)
    if not result.ok:
        app.call_from_thread(lambda: getattr(app, "cancelling", set()).discard(path))
    _report(app, result, f"cancel {path.name}")


def request_export(app: App, run_dir: Path, student: str) -> None:
    """Ask where, then `slimlab-engine export RUN STUDENT DIR` in a worker (default exported/RUN-STUDENT)."""
    from app.screens.prompt import PromptScreen

    def answered(out: str | None) -> None:
        if out:
            what = f"export {run_dir.name}/{student}"
            app.notify(f"{what}: writing {out}…")
            app.run_worker(lambda: _report(app, export_student(run_dir, student, out), what), thread=True,
                           group="engine", name=what)

    app.push_screen(PromptScreen(f"Export student '{student}' of run {run_dir.name} as a Hugging Face folder "
                                 "(weights, tokenizer, model card README.md) to:",
                                 f"exported/{run_dir.name}-{student}"), answered)


def request_resume(app: App, run: RunInfo | None) -> None:
    if run is None:
        return
    if run.state == "running":
        app.notify(f"{run.name} is already running", severity="warning")
        return
    if run.state == "succeeded":
        app.notify(f"{run.name}: every stage succeeded; resuming re-checks the cache and starts nothing new")
    exp = RunLayout(run.path).experiment_file
    if not exp.exists():
        app.notify(f"{run.name}: no experiment.toml to resume from", severity="error")
        return
    launch(app, exp, run.path.parent, f"resume {run.name}")


def launch(app: App, exp_file: Path, runs_dir: Path, what: str, then: Callable[[], None] | None = None) -> None:
    """`slimlab-engine run FILE --detach --runs-dir DIR` in a worker; the result is notified, and
    `then` called (on the app's thread) once it started."""
    app.notify(f"{what}: starting…")
    app.run_worker(partial(_launch, app, exp_file, runs_dir, what, then), thread=True, group="engine", name=what)


def _launch(app: App, exp_file: Path, runs_dir: Path, what: str, then: Callable[[], None] | None) -> None:
    _report(app, launch_detached(exp_file, runs_dir), what, then)


def _report(app: App, result: CommandResult, what: str, then: Callable[[], None] | None = None) -> None:
    def show() -> None:
        if result.ok:
            app.notify(f"{what}: {result.summary}", title="slimlab-engine")
            if then is not None:
                then()
        else:
            app.notify(f"{what} failed: {result.summary}", title="slimlab-engine", severity="error", timeout=10)
        rescan = getattr(app, "rescan", None)
        if rescan:
            rescan()
        app.last_command = result  # type: ignore[attr-defined]

    try:
        app.call_from_thread(show)
    except RuntimeError:  # the app closed meanwhile; the command itself has run
        pass
