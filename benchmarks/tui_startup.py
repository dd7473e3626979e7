"""TUI performance with 100 runs on disk (run directories written by engine.contract' own writer).

1. start-up: `python -m app --runs-dir DIR` in a real pseudo-terminal (80x24, xterm-256color).
   The clock starts just before the process is spawned and stops when the terminal has
   received the first frame (the nav bar), then the first *full* frame: the runs table with
   the newest run's row drawn. Measured from the outside, on the bytes the terminal gets.
2. responsiveness while a stage writes 1,000 log lines a second (another process) plus
   metrics: the TUI runs in a pty with Run detail open on that stage (log tab, then chart tab,
   then the runs table); inside it a 10 ms asyncio timer records event-loop lag, and the newest
   log line shown is compared with the time it was written (tail latency). The 1.5 s after Run
   detail is opened are reported as "open", the 1 s after each tab/screen switch as "switch";
   gc_full_ms lists the full (generation-2) GC passes of the run and their durations.

3. screen switches (`--switches`): the TUI in a pty; after start-up settles (3 s: the warm-up
   imports and gc.freeze are done), keys 2, 3, 1, 4 (Compose, Compare, Runs, GPUs with a fake GPU
   probe) are pressed in turn, ROUNDS times, 1 s apart; a 10 ms asyncio timer records event-loop
   lag and the max lag in the 1 s after each key is reported per screen (first visit apart).

    python3 benchmarks/tui_startup.py [--runs 100] [--repeat 5] [--seconds 8] [--tail-only]
    python3 benchmarks/tui_startup.py --switches [--rounds 4]
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import os
import pty
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ["prepare", "finetune", "prune-depth", "prune-width", "distill-depth", "distill-width", "eval"]


# ---- 100 runs, written by the engine's writer --------------------------------------------------


def make_runs(runs_dir: Path, n: int) -> str:
    """n runs: mostly finished, some running (this process's pid: alive), some dead, some cancelled.
    Returns the name of the run whose finetune stage the tail benchmark writes to."""
    from engine.config import dumps_toml
    from engine.contract import StageStatus, append_metrics, now_iso, write_json

    exp = {"name": "", "model": {"path": "org/model"}, "data": {"dataset": "wikitext"},
           "finetune": {"steps": 300}, "prune": [{"name": "depth", "method": "depth", "num_layers": 16},
                                                  {"name": "width", "method": "width", "ffn_hidden_size": 9216}],
           "distill": {"steps": 300}, "eval": {}}
    for i in range(n):
        name = f"run-{i:03d}"
        root = runs_dir / name
        root.mkdir(parents=True)
        (root / "experiment.toml").write_text(dumps_toml({**exp, "name": name}))
        kind = "running" if i % 10 == 9 else ("dead" if i % 25 == 3 else ("cancelled" if i % 25 == 7 else "done"))
        upto = len(STAGES) if kind == "done" else 1 + i % 5
        # the orchestrator's status.json (same keys as engine.orchestration.orchestrator.PipelineStatus writes)
        pipe_state = {"done": "succeeded", "running": "running", "dead": "running", "cancelled": "cancelled"}[kind]
        write_json(root / "status.json", {
            "name": name, "file": f"experiments/{name}.toml", "stage": STAGES[upto - 1], "running": [],
            "state": pipe_state, "pid": os.getpid() if kind == "running" else _dead_pid(), "pgid": os.getpgid(0),
            "host": os.uname().nodename, "gpus": [0], "started_at": now_iso(), "updated_at": now_iso(),
            "ended_at": None, "error": None, "argv": [],
            "stages": {s: {"action": "run", "reason": "not run yet", "state": "pending", "attempts": 1, "pid": None}
                       for s in STAGES}})
        for j, stage in enumerate(STAGES[:upto]):
            st = StageStatus(root / stage, stage, "hash")
            last = j == upto - 1
            st.start(total_steps=300 if stage in ("finetune", "distill-depth", "distill-width") else None, gpus=[0])
            st._stop.set()  # no heartbeat thread: these statuses are written once
            if stage.startswith(("finetune", "distill")):
                steps = 300 if not last or kind == "done" else 120
                mfile = root / stage / "metrics.jsonl"
                for step in range(1, steps + 1):
                    append_metrics(mfile, {"step": step, "tokens": step * 65536, "split": "train",
                                           "loss": 2.0 + 3.0 / step, "lr": 1e-4, "grad_norm": 0.8,
                                           "tokens_per_s": 50000.0, "mfu": 0.4, "gpu_mem_gb": 61.2})
                    if step % 25 == 0:
                        append_metrics(mfile, {"step": step, "tokens": step * 65536, "split": "val",
                                               "loss": 2.1 + 3.0 / step})
                st.update(step=steps)
            with open(root / stage / "stdout.log", "w") as f:
                f.writelines(f"[{stage}] step {k} loss 2.5\n" for k in range(200))
            if last and kind == "running":
                continue  # stays 'running' with this (alive) pid
            if last and kind == "dead":
                st.doc["pid"] = _dead_pid()
                st._write()
                continue
            st.finish("cancelled" if last and kind == "cancelled" else "succeeded")
        t = time.time() - 3600 + 10 * i  # distinct creation times: run-(n-1) is the newest
        os.utime(root / "experiment.toml", (t, t))
    # the tail target: a running finetune
    return "run-009"


@functools.lru_cache(maxsize=1)
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---- a pty ----------------------------------------------------------------------------------------


def spawn_in_pty(argv: list[str], cols: int = 80, rows: int = 24, env: dict | None = None):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    full_env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows),
                "PYTHONPATH": path, **(env or {})}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=full_env, cwd=ROOT,
                            start_new_session=True, close_fds=True)
    os.close(slave)
    return proc, master


def drain(master: int, until: float, want: list[bytes], t0: float, keep: bytearray | None = None
          ) -> dict[bytes, float]:
    """Read the terminal's bytes until `until`; when each marker first appears (seconds from t0)."""
    seen: dict[bytes, float] = {}
    buf = b""
    while time.time() < until and len(seen) < len(want):
        r, _, _ = select.select([master], [], [], 0.01)
        if not r:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        now = time.time()
        if keep is not None:
            keep += chunk
            continue
        buf += chunk
        for w in want:
            if w not in seen and w in buf:
                seen[w] = now - t0
    return seen


def stop(proc: subprocess.Popen, master: int) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    end = time.time() + 5
    while proc.poll() is None and time.time() < end:
        select.select([master], [], [], 0.05)
        try:
            os.read(master, 65536)
        except OSError:
            break
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    os.close(master)


# ---- 1. start-up --------------------------------------------------------------------------------


BARE = r'''
from textual.app import App
from textual.widgets import Static
class Bare(App):
    def compose(self):
        yield Static("bare-textual-frame")
Bare().run()
'''


def bench_startup(runs_dir: Path, newest: str, repeat: int) -> dict:
    """Each repeat: a bare Textual app (one Static: the floor), then slimlab, in the same pty setup."""
    bare, firsts, fulls = [], [], []
    for _ in range(repeat):
        t0 = time.time()
        proc, master = spawn_in_pty([sys.executable, "-c", BARE])
        bare.append(drain(master, t0 + 20, [b"bare-textual-frame"], t0).get(b"bare-textual-frame", float("nan")))
        stop(proc, master)
        t0 = time.time()
        proc, master = spawn_in_pty([sys.executable, "-m", "app", "--runs-dir", str(runs_dir)])
        seen = drain(master, t0 + 20, [b"slimlab", newest.encode()], t0)
        stop(proc, master)
        firsts.append(seen.get(b"slimlab", float("nan")))
        fulls.append(seen.get(newest.encode(), float("nan")))
    return {"bare_textual_s": bare, "first_frame_s": firsts, "full_frame_s": fulls,
            "bare_textual_min_s": min(bare), "bare_textual_median_s": statistics.median(bare),
            "full_frame_min_s": min(fulls), "full_frame_median_s": statistics.median(fulls),
            "full_frame_max_s": max(fulls)}


# ---- 2. responsiveness while tailing a fast log ---------------------------------------------------

CHILD = r'''
import asyncio, gc, json, sys, time
from pathlib import Path
from app.main import SlimlabApp
from app.messages import OpenRun

runs_dir, run, seconds, out = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
PHASES = ("log", "chart", "runs")
SETTLE = 1.0  # after switching tab/screen: the switch itself is reported apart ("switch" lags)

class Bench(SlimlabApp):
    def on_mount(self):
        super().on_mount()
        self.lags = {p: [] for p in ("open",) + PHASES + ("switch",)}
        self.tail_lat = []
        self.gc_full_ms = []  # durations of full (generation-2) GC passes
        self._gc_t = 0.0
        gc.callbacks.append(self._gc_cb)
        self.run_worker(self.probe(), exclusive=False)

    def _gc_cb(self, phase, info):
        if info["generation"] == 2:
            if phase == "start":
                self._gc_t = time.perf_counter()
            else:
                self.gc_full_ms.append(round(1000 * (time.perf_counter() - self._gc_t), 1))

    async def tick(self, bucket):
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        self.lags[bucket].append(time.perf_counter() - t - 0.01)

    async def probe(self):
        while not (self.runs_loaded and self.screen_stack):
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        self.post_message(OpenRun(runs_dir / run, "finetune"))
        opened = time.perf_counter() + 1.5  # the detail screen opens and reads the log's history
        while time.perf_counter() < opened:
            await self.tick("open")
        self.screen.action_tab("log")
        for phase in PHASES:
            if phase == "chart":
                self.screen.action_tab("chart")
            elif phase == "runs":
                self.pop_screen()
            settle = time.perf_counter() + SETTLE
            while time.perf_counter() < settle:
                await self.tick("switch")
            stop = time.perf_counter() + seconds / len(PHASES)
            while time.perf_counter() < stop:
                await self.tick(phase)
                if phase == "log":
                    log = self.screen.query_one("#log-view")
                    if log.lines:
                        try:
                            self.tail_lat.append(time.time() - float(log.lines[-1].split()[1]))
                        except (IndexError, ValueError):
                            pass
        Path(out).write_text(json.dumps({"lags": self.lags, "tail_latency": self.tail_lat,
                                         "gc_full_ms": self.gc_full_ms}))
        self.exit()

Bench(runs_dir=runs_dir, gpu_probe=None).run()
'''

WRITER = r'''
import json, sys, time
from engine.contract import append_metrics
log, metrics, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
t_end = time.time() + seconds
n = step = 0
with open(log, "a", buffering=1) as f:
    t0 = time.time()
    while time.time() < t_end:
        due = int((time.time() - t0) * rate)
        while n < due:
            f.write(f"line {time.time():.6f} {n} loss=2.345 lr=1e-4 tokens/s=51234 some more text to make it a realistic length\n")
            n += 1
        if n // 100 > step:  # a metrics line every 100 log lines (10 steps/s)
            step = n // 100
            append_metrics(metrics, {"step": 1000 + step, "tokens": step * 65536, "split": "train",
                                     "loss": 2.0 + 1.0 / step, "tokens_per_s": 50000.0})
        time.sleep(0.005)
print(n)
'''


def bench_tail(runs_dir: Path, run: str, seconds: float, rate: int) -> dict:
    stage_dir = runs_dir / run / "finetune"
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "child.json"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(stage_dir / "stdout.log"),
                                   str(stage_dir / "metrics.jsonl"), str(rate), str(seconds + 6)],
                                  stdout=subprocess.PIPE,
                                  env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                      p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)})
        t0 = time.time()
        proc, master = spawn_in_pty([sys.executable, "-c", CHILD, str(runs_dir), run, str(seconds), str(out)])
        screen = bytearray()
        while proc.poll() is None and time.time() < t0 + seconds + 30:  # keep the terminal drained
            drain(master, time.time() + 0.5, [b"\x00never"], t0, keep=screen)
        stop(proc, master)
        written = int(writer.communicate()[0] or 0)
        if not out.exists():
            raise SystemExit("the TUI under test failed:\n" + screen[-3000:].decode(errors="replace"))
        res = json.loads(out.read_text())
    lags = res["lags"]
    summary = {"lines_written": written, "rate_lines_per_s": rate, "gc_full_ms": res.get("gc_full_ms")}
    for phase, values in lags.items():
        values = sorted(values)
        summary[f"{phase}_lag_max_ms"] = 1000 * values[-1]
        summary[f"{phase}_lag_p99_ms"] = 1000 * values[int(0.99 * (len(values) - 1))]
        summary[f"{phase}_lag_median_ms"] = 1000 * statistics.median(values)
        summary[f"{phase}_timer_ticks"] = len(values)
    tl = sorted(res["tail_latency"])
    if tl:
        summary["tail_latency_median_ms"] = 1000 * statistics.median(tl)
        summary["tail_latency_max_ms"] = 1000 * tl[-1]
    return summary


# ---- 3. screen switches ---------------------------------------------------------------------------

SWITCH_CHILD = r'''
import asyncio, json, sys, time
from pathlib import Path
from app.main import SlimlabApp

runs_dir, rounds, out = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
KEYS = (("2", "compose"), ("3", "compare"), ("1", "runs"), ("4", "gpus"))

class FakeProbe:
    def sample(self):
        return []
    def close(self):
        pass

class Bench(SlimlabApp):
    def on_mount(self):
        super().on_mount()
        self.switch_lags = []
        self.run_worker(self.probe(), exclusive=False)

    async def probe(self):
        while not (self.runs_loaded and self.screen_stack):
            await asyncio.sleep(0.05)
        await asyncio.sleep(3.0)  # warm-up imports, gc.freeze
        for rnd in range(rounds):
            for key, mode in KEYS:
                t_key = time.perf_counter()
                self.simulate_key(key)
                worst = 0.0
                while time.perf_counter() < t_key + 1.0:
                    t = time.perf_counter()
                    await asyncio.sleep(0.01)
                    worst = max(worst, time.perf_counter() - t - 0.01)
                self.switch_lags.append({"round": rnd, "key": key, "mode": mode, "shown": self.current_mode,
                                         "max_lag_ms": 1000 * worst})
        Path(out).write_text(json.dumps(self.switch_lags))
        self.exit()

Bench(runs_dir=runs_dir, gpu_probe=FakeProbe()).run()
'''


def bench_switches(runs_dir: Path, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "child.json"
        t0 = time.time()
        proc, master = spawn_in_pty([sys.executable, "-c", SWITCH_CHILD, str(runs_dir), str(rounds), str(out)])
        screen = bytearray()
        while proc.poll() is None and time.time() < t0 + 10 + 5 * rounds:
            drain(master, time.time() + 0.5, [b"\x00never"], t0, keep=screen)
        stop(proc, master)
        if not out.exists():
            raise SystemExit("the TUI under test failed:\n" + screen[-3000:].decode(errors="replace"))
        rows = json.loads(out.read_text())
    summary: dict = {"rows": [f"round {r['round']} key {r['key']} -> {r['shown']}: {r['max_lag_ms']:.1f} ms"
                              for r in rows]}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        lags = [r["max_lag_ms"] for r in rows if r["mode"] == mode]
        summary[mode] = {"first_ms": round(lags[0], 1), "later_max_ms": round(max(lags[1:], default=0), 1),
                         "later_median_ms": round(statistics.median(lags[1:]), 1) if lags[1:] else None}
    return summary


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=9.0, help="duration of the tail benchmark (3 phases)")
    ap.add_argument("--rate", type=int, default=1000, help="log lines per second")
    ap.add_argument("--switches", action="store_true", help="only the screen-switch benchmark (keys 2, 3, 1, 4)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of 2, 3, 1, 4 for --switches")
    ap.add_argument("--tail-only", action="store_true", help="skip the start-up part")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        runs_dir = Path(td) / "runs"
        t = time.time()
        tail_run = make_runs(runs_dir, args.runs)
        print(f"made {args.runs} runs in {time.time() - t:.1f}s under {runs_dir}", flush=True)
        newest = f"run-{args.runs - 1:03d}"
        print(f"cpus {os.cpu_count()}, load average before: {os.getloadavg()}", flush=True)
        if args.switches:
            print(json.dumps(bench_switches(runs_dir, args.rounds), indent=1), flush=True)
            print(f"load average after: {os.getloadavg()}", flush=True)
            return 0
        if not args.tail_only:
            start = bench_startup(runs_dir, newest, args.repeat)
            print(json.dumps(start, indent=1), flush=True)
        tail = bench_tail(runs_dir, tail_run, args.seconds, args.rate)
        print(json.dumps(tail, indent=1), flush=True)
        print(f"load average after: {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
