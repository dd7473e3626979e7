"""`slimlab [--runs-dir DIR]`: the terminal UI.

Start-up is kept well under half a second: only textual and engine.contract are imported here;
the other screens (pydantic, plotext, NVML) load when first shown, and run directories are
scanned in a thread worker that publishes snapshots through `App.runs_signal`. The same thread
is the one file watcher (app.file_watch): screens subscribe to the files of the runs they show.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.signal import Signal
from textual.worker import get_current_worker

from app.file_watch import WatchService
from app.messages import EditExperiment, OpenRun
from app.textual_workarounds import GcTuning, InOrderKeys, KeepCss
from engine.contract import RunInfo, RunScanner

SCAN_INTERVAL_S = 1.0


def _screenful() -> int:
    """Runs read before the first frame: the table's visible rows (the terminal's height less the
    nav bar, header, 9-line preview and footer, plus a little margin); the rest follow at once."""
    return max(12, shutil.get_terminal_size((80, 40)).lines - 10)


THEMES = ("textual-dark", "textual-light")
# imported in a thread after the first frame (see SlimlabApp._warm_imports); never torch
WARM_MODULES = ("app.screens.run_detail", "app.screens.compare", "app.screens.compose", "app.screens.help",
                "app.screens.gpus", "engine.config", "engine.orchestration.check")


def _runs_screen():
    from app.screens.runs import RunsScreen

    return RunsScreen()


def _compose_screen():
    from app.screens.compose import ComposeScreen

    return ComposeScreen()


def _compare_screen():
    from app.screens.compare import CompareScreen

    return CompareScreen()


def _gpus_screen():
    from app.screens.gpus import GpuScreen

    return GpuScreen()


class SlimlabApp(InOrderKeys, KeepCss, App[None]):
    """Runs (home), Run detail, Compose, Compare and GPUs, over one runs directory."""

    CSS_PATH = Path(__file__).with_name("slimlab.tcss")  # absolute: subclasses may live elsewhere
    TITLE = "slimlab"
    MODES = {"runs": _runs_screen, "compose": _compose_screen, "compare": _compare_screen, "gpus": _gpus_screen}
    DEFAULT_MODE = "runs"
    BINDINGS = [
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("1", "show('runs')", "Runs"),
        Binding("2", "show('compose')", "Compose"),
        Binding("3", "show('compare')", "Compare"),
        Binding("4", "show('gpus')", "GPUs"),
        Binding("ctrl+t", "toggle_theme", "Light/dark", show=False),
        # vi keys in every list and scroll area (a focused text field types them instead)
        Binding("j", "list_move('down')", "Down (lists)", show=False),
        Binding("k", "list_move('up')", "Up (lists)", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, runs_dir: str | Path = "runs", experiments_dir: str | Path = "experiments",
                 theme: str | None = None, gpu_probe: object | None = "auto",
                 scan_interval: float = SCAN_INTERVAL_S, clock: Callable[[], float] = time.time):
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.experiments_dir = Path(experiments_dir)
        self.clock = clock  # wall-clock time, for ages and ETAs shown (tests pass a stopped one)
        self.scanner = RunScanner(self.runs_dir, clock=clock)
        self.scan_interval = scan_interval
        self.runs: list[RunInfo] = []
        self.runs_loaded = False
        self.runs_signal: Signal[list[RunInfo]] = Signal(self, "runs")
        self.gpus_signal: Signal[object] = Signal(self, "gpus")
        self.files = WatchService()  # the one file watcher; its thread also runs the scans
        self._scan_now = threading.Event()
        self._probe_arg = gpu_probe
        self.gpu_probe = None if gpu_probe == "auto" else gpu_probe
        # said when `4` is pressed without a GPU panel
        self.no_gpu_reason = "still looking for GPUs" if gpu_probe == "auto" else "no GPU probe given"
        self.scan_seconds = 0.0  # duration of the last scan (benchmarked)
        self.last_command = None  # CommandResult of the last engine command (launch, cancel)
        self.compose_dirty = False  # Compose holds edits that are not saved
        self.cancelling: set[Path] = set()  # runs whose cancel was confirmed, until they stop running
        self._built_modes = {self.DEFAULT_MODE}  # modes whose screen exists (see switch_mode)
        self.gc_tuning = GcTuning(self)
        if theme:
            self.theme = theme
        # The first scan starts now, while Textual parses CSS and builds the screen, so the
        # first frame can already show the table (see adopt_first_scan).
        self._first_scan: list[RunInfo] | None = None
        self._painted = threading.Event()
        self._first_scan_thread = threading.Thread(target=self._do_first_scan, daemon=True, name="first scan")
        self._first_scan_thread.start()

    def _do_first_scan(self) -> None:
        self._first_scan = self.scanner.scan(newest=_screenful())

    def adopt_first_scan(self, wait: float = 0.0) -> None:
        """If the first scan is done (waiting up to `wait` seconds for it), take its result now.
        The home screen waits a little: the scan is ~25 ms of Python that, in its thread, only gets
        the GIL between the main thread's turns, so without the wait the first frame had no rows
        and the table came ~0.15 s later; past `wait` (a slow file system) "scanning …" shows."""
        if not self.runs_loaded and self._first_scan is None and wait > 0:
            self._first_scan_thread.join(wait)
        if not self.runs_loaded and self._first_scan is not None:
            self.runs, self.runs_loaded = self._first_scan, True

    # ---- lifecycle ---------------------------------------------------------------------------
    def on_mount(self) -> None:
        self._watch_loop()
        if self._probe_arg == "auto":
            self._open_gpu_probe()
        self._warm_imports()

    @work(thread=True, group="warm-imports", name="import the other screens")
    def _warm_imports(self) -> None:
        """Import the other screens (plotext, pydantic) in a thread once the table is on screen,
        so the first switch to them does not import on the event loop (up to ~0.1 s each)."""
        import importlib

        worker = get_current_worker()
        self._painted.wait(5.0)
        time.sleep(0.5)  # let the full scan after the first screenful go first
        for name in WARM_MODULES:
            if worker.is_cancelled:
                return
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the real import, when the screen opens, reports it
                pass
        # Everything so far (textual, pydantic, the modules, the home screen) lives as long as the
        # app: keep it out of the cyclic GC, whose full passes over it stalled the event loop for
        # 80-160 ms now and then (screen switches allocate enough to trigger them).
        self.gc_tuning.freeze_startup()  # main() (and `python -m app` before its imports) turned it off
        try:
            self.call_from_thread(self.gc_tuning.own_full_passes)
        except RuntimeError:  # the app is closing
            pass

    def on_unmount(self) -> None:
        self.gc_tuning.restore()

    # ---- screen switches -------------------------------------------------------------------------
    def switch_mode(self, mode: str):
        """Textual's switch_mode; a mode's first screen is built with the GC off (see GcTuning)."""
        if mode not in self._built_modes and mode in self.MODES:
            self._built_modes.add(mode)
            self.gc_tuning.building_screen()
        return super().switch_mode(mode)

    @work(thread=True, exclusive=True, group="watch", name="scan runs, watch files")
    def _watch_loop(self) -> None:
        """The run list every scan_interval (RunScanner re-reads only what moved, and judges the
        clock-dependent states: stalls, dead processes) and the screens' files at their own pace."""
        worker = get_current_worker()
        self._first_scan_thread.join()
        if self._first_scan is not None:
            try:
                self.call_from_thread(self._publish_runs, self._first_scan)
                self.call_from_thread(self.call_after_refresh, self._painted.set)
            except RuntimeError:  # the app is closing
                return
            self._painted.wait(1.0)  # read the other runs once the first screenful is on screen
        next_scan = 0.0
        while not worker.is_cancelled:
            if time.monotonic() >= next_scan or self._scan_now.is_set():
                self._scan_now.clear()
                t0 = time.perf_counter()
                runs = self.scanner.scan()
                self.scan_seconds = time.perf_counter() - t0
                try:
                    self.call_from_thread(self._publish_runs, runs)
                except RuntimeError:  # the app is closing
                    return
                next_scan = time.monotonic() + self.scan_interval
            self.files.poll(time.monotonic())
            due = self.files.watcher.next_due()
            self.files.sleep(next_scan if due is None else min(next_scan, due), time.monotonic())

    def _publish_runs(self, runs: list[RunInfo]) -> None:
        self.runs, self.runs_loaded = runs, True
        if self.cancelling:
            self.cancelling &= {r.path for r in runs if r.state == "running"}
        self.runs_signal.publish(runs)

    def rescan(self) -> None:
        """Scan now (after a launch or a cancel) instead of at the next tick."""
        self._scan_now.set()
        self.files.poke()

    @work(thread=True, group="gpu-probe", name="open NVML")
    def _open_gpu_probe(self) -> None:
        from app.data.gpus import NvmlProbe

        probe = NvmlProbe.open()
        if probe is not None:
            self.call_from_thread(self._set_probe, probe)
        else:
            self.no_gpu_reason = NvmlProbe.why_not or "NVML: no GPU found"

    def _set_probe(self, probe: object) -> None:
        self.gpu_probe = probe
        self.refresh_bindings()
        self.gpus_signal.publish(probe)

    # ---- actions -----------------------------------------------------------------------------
    def action_show(self, mode: str) -> None:
        if mode == "gpus" and self.gpu_probe is None:  # no GPU screen: say why, as nvitop does
            self.notify(f"no NVIDIA GPU ({self.no_gpu_reason})", severity="warning")
            return
        if self.current_mode != mode:
            self.switch_mode(mode)
        else:  # already there: back to its top screen (e.g. from a run's detail to the table)
            while len(self.screen_stack) > 1:
                self.pop_screen()

    def action_help(self) -> None:
        from app.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(type(self.screen)))

    async def action_quit(self) -> None:
        """Quit; runs keep going (they are separate processes). Asks first if Compose has unsaved edits."""
        if not self.compose_dirty:
            self.exit()
            return
        from app.screens.confirm import ConfirmScreen

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit()

        self.push_screen(ConfirmScreen("Compose has unsaved changes. Quit anyway?", yes="Quit", no="Stay"), answered)

    async def action_list_move(self, way: str) -> None:
        """j / k: what ↓ / ↑ do in the focused list (its cursor) or scroll area."""
        widget = self.focused
        for action in (f"cursor_{way}", f"scroll_{way}"):
            if widget is not None and callable(getattr(widget, f"action_{action}", None)):
                await widget.run_action(action)
                return

    def action_toggle_theme(self) -> None:
        self.theme = THEMES[1] if self.theme == THEMES[0] else THEMES[0]

    async def on_open_run(self, message: OpenRun) -> None:
        from app.screens.run_detail import RunDetailScreen

        if self.current_mode != "runs":
            await self.switch_mode("runs")  # done before the push: the detail goes onto Runs' stack
        while len(self.screen_stack) > 1:
            await self.pop_screen()
        await self.push_screen(RunDetailScreen(message.path, message.stage))

    async def on_edit_experiment(self, message: EditExperiment) -> None:
        await self.switch_mode("compose")
        compose = self.screen
        await compose.unless_unsaved("edit a copy of this run", lambda: compose.load_file(message.path, message.as_copy))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="slimlab", description="slimlab terminal UI: compose, launch, watch, compare")
    ap.add_argument("--runs-dir", default="runs", help="where run directories live (default: ./runs)")
    ap.add_argument("--experiments-dir", default="experiments",
                    help="where Compose saves and looks for experiment files (default: ./experiments)")
    ap.add_argument("--theme", choices=("dark", "light"), help="colour theme (ctrl+t toggles)")
    args = ap.parse_args(argv)
    theme = {"dark": THEMES[0], "light": THEMES[1]}.get(args.theme or "")
    # No cyclic GC until the first frame is on screen (its passes over everything start-up allocates
    # only delay it); _warm_imports freezes what is alive then and turns it back on.
    gc.disable()
    try:
        SlimlabApp(runs_dir=args.runs_dir, experiments_dir=args.experiments_dir, theme=theme).run()
    finally:
        gc.enable()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
