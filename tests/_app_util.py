"""Run directories for the TUI tests, written by the engine's own writer (engine.contract)."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

from app.main import SlimlabApp
from engine.config import dumps_toml
from engine.contract import (
    RunLayout,
    StageStatus,
    append_metrics,
    now_iso,
    read_json,
    split_entry,
    write_json,
)


def experiment_dict(name: str, students: tuple[str, ...] = ("depth", "width"), runs_dir: str = "runs",
                    **extra) -> dict:
    d = {
        "name": name,
        "runs_dir": runs_dir,
        "model": {"path": "some/model"},
        "data": {"dataset": "builtin:stdlib-docs", "seq_length": 64},
        "finetune": {"steps": 20, "global_batch_size": 4, "micro_batch_size": 2},
        "prune": [{"name": s, "method": "depth", "num_layers": 2} if s.startswith("depth")
                  else {"name": s, "method": "width", "ffn_hidden_size": 64} for s in students],
        "distill": {"steps": 20, "global_batch_size": 4, "micro_batch_size": 2},
        "eval": {"splits": ["validation"]},
    }
    d.update(extra)
    return d


async def wait_for(pilot, cond, timeout: float = 30.0, what: str = "condition") -> None:
    """Let the app run until `cond()` holds; fail naming `what` after `timeout` seconds (generous: a
    loaded machine is slow, and a condition that holds returns at once)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def show(pilot, app, key: str, screen: str, runs: int | None = None):
    """Press `key` (once the Runs list holds `runs` runs, when given) and wait until the screen named `screen`
    is shown; that screen."""
    if runs is not None:
        await wait_for(pilot, lambda: app.runs_loaded and len(app.runs) == runs, what=f"{runs} runs listed")
    await pilot.press(key)
    await wait_for(pilot, lambda: type(app.screen).__name__ == screen, what=screen)
    return app.screen


async def quality_speed(pilot, app, points: int):
    """Compare's quality-vs-speed tab (v), once it has drawn `points` points; the chart."""
    await pilot.press("v")
    chart = app.screen.query_one("#quality-speed")
    await wait_for(pilot, lambda: len(chart.points) == points and chart.size.height > 0, what=f"{points} points")
    await pilot.pause()
    return chart


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


class RunWriter:
    """Writes one run directory the way the engine does; `stop()` ends heartbeat threads."""

    def __init__(self, runs_dir: Path, name: str, students: tuple[str, ...] = ("depth", "width"), **extra):
        self.root = runs_dir / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.exp = experiment_dict(name, students, runs_dir=str(runs_dir), **extra)
        (self.root / "experiment.toml").write_text(dumps_toml(self.exp))
        self.statuses: dict[str, StageStatus] = {}

    def stage(self, stage: str, state: str = "running", total_steps: int | None = 20, gpus=(0,),
              step: int = 0, error: str | None = None) -> StageStatus:
        st = StageStatus(self.root / stage, stage, config_hash="h")
        st.start(total_steps=total_steps, gpus=list(gpus))
        st._stop.set()  # no heartbeat thread writing into a test's tmp dir after it is gone
        if step:
            st.update(step=step)
        if state != "running":
            st.finish(state, error)
        self.statuses[stage] = st
        return st

    def metrics(self, stage: str, steps: range, loss0: float = 5.0, val_every: int = 5, tokens_per_step: int = 256,
                tokens_per_s: float = 1234.0) -> None:
        path = self.root / stage / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        for step in steps:
            loss = loss0 / (1 + 0.1 * step)
            append_metrics(path, {"step": step, "tokens": step * tokens_per_step, "split": "train", "loss": loss,
                                  "lr": 1e-4, "tokens_per_s": tokens_per_s})
            if val_every and step % val_every == 0:
                append_metrics(path, {"step": step, "tokens": step * tokens_per_step, "split": "val",
                                      "loss": loss + 0.1})

    def log(self, stage: str, lines: list[str]) -> None:
        path = self.root / stage / "stdout.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.writelines(line + "\n" for line in lines)

    def die(self, stage: str) -> None:
        """The stage's process vanished without updating status.json (kill -9)."""
        st = self.statuses[stage]
        st.doc["pid"] = dead_pid()
        st.doc["state"] = "running"
        st._write()

    def result(self, model: str, params: int, loss: float, split: str = "validation", tokens: int = 4096) -> None:
        """Add one model's evaluation to eval/results.json, in the eval stage's shape."""
        path = RunLayout(self.root).results_file
        doc = read_json(path) or {"models": {}, "seq_length": self.exp["data"]["seq_length"]}
        entry = doc["models"].setdefault(model, {"params": params, "path": str(self.root / model / "model"),
                                                 "splits": {}, "tokens_per_s": 1000.0})
        entry["splits"][split] = split_entry(loss, tokens)
        doc["updated_at"] = now_iso()
        write_json(path, doc)


def live_finetune_run(runs_dir: Path, name: str = "live"):
    """A run fine-tuning its teacher (step 2 of its total, 2 train metric lines): (writer, stage)."""
    live = RunWriter(runs_dir, name)
    live.stage("prepare", "succeeded", total_steps=None)
    ft = live.stage("finetune", "running", step=2)
    live.metrics("finetune", range(1, 3))
    return live, ft


def finished_run(runs_dir: Path, name: str, students=("depth", "width"), base_loss: float = 3.0) -> RunWriter:
    """A run whose every stage succeeded, with val curves and eval/results.json."""
    w = RunWriter(runs_dir, name, students)
    w.stage("prepare", "succeeded", total_steps=None)
    w.stage("finetune", "succeeded", step=20)
    w.metrics("finetune", range(1, 21), loss0=base_loss + 2)
    for i, s in enumerate(students):
        w.stage(f"prune-{s}", "succeeded", total_steps=None)
        w.metrics(f"prune-{s}", range(0, 1), loss0=base_loss + 3 + i, val_every=1)
        w.stage(f"distill-{s}", "succeeded", step=20)
        w.metrics(f"distill-{s}", range(1, 21), loss0=base_loss + 1 + 0.5 * i)
    w.stage("eval", "succeeded", total_steps=None)
    w.result("teacher", 1000, base_loss)
    for i, s in enumerate(students):
        w.result(f"prune-{s}", 500 + i, base_loss + 3 + i)
        w.result(f"distill-{s}", 500 + i, base_loss + 0.5 + i)
    return w


def run_async(fn):
    """An async pilot test as a plain pytest test."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


def make_app(runs: Path, tmp_path: Path, **kw) -> SlimlabApp:
    """The app over `runs`, scanning often, with its clock stopped: ages shown never tick, so what
    a test sees does not depend on how fast a (loaded) machine runs it."""
    stopped = time.time()
    return SlimlabApp(runs_dir=runs, experiments_dir=tmp_path / "experiments", gpu_probe=kw.pop("gpu_probe", None),
                      scan_interval=0.1, clock=kw.pop("clock", lambda: stopped), **kw)


def write_search_json(w, stage: str = "prune-auto") -> dict:
    """search.json as the prune stage writes it (engine.prune.search_part.run_search): the engine's
    candidates for a small teacher and budget, the scored ones given losses (no model needed), the
    lowest ranked first and chosen, written by the contract's writer to RunLayout.search_file."""
    from engine.config import PruneConfig
    from engine.config.shape import shape_from_config
    from engine.contract import RunLayout, write_json
    from engine.search.table import search_document
    from engine.shapes.candidates import search_space

    teacher = shape_from_config(dict(model_type="llama", vocab_size=1000, hidden_size=96, intermediate_size=256,
                                     num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=2,
                                     tie_word_embeddings=True))
    p = PruneConfig(name="auto", method="search", target_params=0.6, hidden_multiple=12, ffn_multiple=16, top_k=4)
    space = search_space(teacher, p, "prune[2]", "bfloat16", 64)
    screen = {i: 4.5 + 0.01 * ((7 * i) % 13) for i in space.screened}
    best = sorted(screen, key=lambda i: (screen[i], i))[:space.top_k]
    scores = {i: 4.0 + 0.1 * ((7 * k) % len(best)) for k, i in enumerate(best)}
    ranked = sorted(scores, key=lambda i: (scores[i], i))
    doc = search_document(space, "loss", False, {"kind": "activation"}, ranked, scores, scores,
                          {i: 0.1 for i in scores}, screen, {i: 0.01 for i in screen})
    write_json(RunLayout(w.root).search_file(stage), doc)
    return doc


def teacher_dir(tmp_path: Path) -> Path:
    """A local teacher `check` can size: 4 layers, hidden 64, ffn 128, 4 heads / 2 kv."""
    d = tmp_path / "teacher"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False}))
    (d / "tokenizer_config.json").write_text("{}")  # `check` asks for a tokenizer beside a local teacher
    header = b'{"__metadata__":{}}'  # `check` asks for weights too: a safetensors file holding no tensor
    (d / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return d
