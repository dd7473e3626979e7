"""The real pipeline end to end on the CPU: experiments/demo.toml shrunk with --set.

One demo run (module fixture) is checked against the run-directory contract; copies of it are
then killed (SIGKILL) and cancelled mid-distillation and must resume / leave no process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engine.config import load_experiment
from engine.contract import RunLayout, read_json, read_metrics

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "experiments" / "demo.toml"
STAGES = ["prepare", "finetune", "prune-depth", "prune-width", "distill-depth", "distill-width", "eval"]

SMALL = [
    'model.arch={model_type = "llama", hidden_size = 64, intermediate_size = 192, num_hidden_layers = 4, '
    'num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 128, tie_word_embeddings = true}',
    "model.tokenizer_train_vocab=1024",
    "data.seq_length=64", "data.max_tokens=300000",
    "finetune.steps=60", "finetune.global_batch_size=8", "finetune.micro_batch_size=8", "finetune.warmup_steps=5",
    "finetune.lr=1e-2", "finetune.min_lr=1e-3",
    "finetune.val_interval=20", "finetune.val_batches=4", "finetune.checkpoint_interval=20",
    # students that lose enough to pruning for distillation to have something to win back
    "prune.depth.num_layers=1", "prune.depth.calibration_samples=16",
    "prune.width.ffn_hidden_size=64", "prune.width.hidden_size=32", "prune.width.calibration_samples=16",
    "distill.steps=30", "distill.global_batch_size=8", "distill.micro_batch_size=8", "distill.warmup_steps=3",
    "distill.lr=5e-3", "distill.min_lr=5e-4",
    "distill.val_interval=10", "distill.val_batches=4", "distill.checkpoint_interval=5",
    "eval.batches=4", "eval.micro_batch_size=8", "eval.speed_max_seconds=2",
    "eval.limit=40",  # of the demo task's 400 items (8 requests each): the pipeline, not the score, is tested here
]


def engine_cmd() -> list[str]:
    exe = shutil.which("slimlab-engine")
    return [exe] if exe else [sys.executable, "-m", "engine"]


def run_cmd(runs_dir: Path, *extra: str) -> list[str]:
    sets = [x for o in SMALL for x in ("--set", o)]
    return [*engine_cmd(), "run", str(DEMO), "--runs-dir", str(runs_dir), *sets, *extra]


def attempts(layout: RunLayout, stage: str) -> list[str]:
    """The attempt header lines of a stage's stdout.log."""
    log = layout.log_file(stage)
    return [ln for ln in log.read_text().splitlines() if ln.startswith("===== ")] if log.exists() else []


def wait_until(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stage_step(layout: RunLayout, stage: str) -> int:
    st = read_json(layout.stage_status_file(stage)) or {}
    return int(st.get("step") or 0) if st.get("state") == "running" and st.get("total_steps") else -1


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("e2e") / "runs"
    out = subprocess.run(run_cmd(runs), cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return runs / "demo"


def _copy(run: Path, tmp_path: Path) -> tuple[Path, RunLayout]:
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / "demo")
    return runs, RunLayout(runs / "demo")


# ---- the contract -----------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_end_to_end_meets_the_contract(demo_run):
    layout = RunLayout(demo_run)
    exp = load_experiment(layout.experiment_file)
    assert exp.finetune.steps == 60 and exp.prune_by_name("width").hidden_size == 32  # --set reached the stages
    pipe = read_json(layout.status_file)
    assert pipe["state"] == "succeeded" and pipe["ended_at"] and pipe["error"] is None
    for s in STAGES:
        st = read_json(layout.stage_status_file(s))
        assert st["state"] == "succeeded", (s, st)
        assert st["config_hash"] == exp.stage_hash(s) and st["ended_at"] >= st["started_at"]
        assert len(attempts(layout, s)) == 1, s

    meta = read_json(layout.data_dir / "meta.json")
    assert meta["vocab_size"] == 1024 and meta["splits"]["train"]["tokens"] > 0
    for split in ("train", "validation", "test"):
        assert (layout.data_dir / f"{split}.bin").stat().st_size > 0
    assert (layout.tokenizer_dir / "tokenizer.json").exists()

    for s in ("finetune", "distill-depth", "distill-width"):
        assert (layout.model_dir(s) / "config.json").exists()
        assert list(layout.model_dir(s).glob("*.safetensors"))
        recs, _ = read_metrics(layout.metrics_file(s))
        train = [r for r in recs if r.get("split") == "train"]
        val = [r for r in recs if r.get("split") == "val"]
        assert [r["step"] for r in train] == list(range(1, len(train) + 1)) and train[-1]["step"] == (
            60 if s == "finetune" else 30)
        assert all(k in train[-1] for k in ("loss", "lr", "tokens", "tokens_per_s", "grad_norm"))
        assert val and all(isinstance(r["loss"], float) for r in val)
    for s in ("prune-depth", "prune-width"):
        assert (layout.model_dir(s) / "config.json").exists() and layout.importance_file(s).exists()
        recs, _ = read_metrics(layout.metrics_file(s))
        assert [r["split"] for r in recs] == ["val"] and recs[0]["step"] == 0
    depth_cfg = read_json(layout.model_dir("distill-depth") / "config.json")
    width_cfg = read_json(layout.model_dir("distill-width") / "config.json")
    assert depth_cfg["num_hidden_layers"] == 1 and width_cfg["hidden_size"] == 32
    assert width_cfg["intermediate_size"] == 64 and width_cfg["head_dim"] == 16

    results = read_json(layout.results_file)["models"]
    assert set(results) == {"teacher", "prune-depth", "prune-width", "distill-depth", "distill-width"}
    for name, r in results.items():
        assert r["params"] > 0 and set(r["splits"]) == {"validation", "test"}, name
    for student in ("depth", "width"):
        pruned = results[f"prune-{student}"]["splits"]["validation"]["loss"]
        distilled = results[f"distill-{student}"]["splits"]["validation"]["loss"]
        assert distilled < pruned - 0.05, f"{student}: distilled {distilled:.3f} vs pruned-only {pruned:.3f}"


@pytest.mark.slow
def test_status_compare_and_cached_rerun(demo_run, capsys):
    from engine.cli import main
    from engine.contract import read_model_rows

    layout = RunLayout(demo_run)
    rows = {r.label: r for r in read_model_rows(demo_run)}
    assert set(rows) == {"teacher", "depth", "width"}
    assert rows["depth"].layers == 1 and rows["width"].hidden == 32 and rows["width"].ffn == 64
    for r in (rows["depth"], rows["width"]):
        assert r.distilled_loss < r.pruned_loss and r.tokens == 30 * 8 * 64 and r.tokens_per_s > 0
        assert 0 < r.params < rows["teacher"].params
    assert main(["compare", str(demo_run), "--out", str(demo_run.parent / "cmp")]) == 0
    out = capsys.readouterr().out
    assert any(ln.split()[:1] == ["depth"] for ln in out.splitlines())
    assert any(ln.split()[:1] == ["width"] for ln in out.splitlines())
    report = (demo_run.parent / "cmp" / "report.md").read_text()
    assert "| model |" in report and "after distillation" in report
    assert (demo_run.parent / "cmp" / "val_loss.png").read_bytes()[:4] == b"\x89PNG"

    assert main(["status", str(demo_run)]) == 0
    out = capsys.readouterr().out
    assert out.count("succeeded") >= len(STAGES)
    # the same command again: every stage is up to date, nothing runs
    out = subprocess.run(run_cmd(demo_run.parent), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("up to date") == len(STAGES)
    assert all(len(attempts(layout, s)) == 1 for s in STAGES)


# ---- kill and resume ----------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_completes_without_repeating(demo_run, tmp_path):
    runs, layout = _copy(demo_run, tmp_path)
    # more distillation steps: both students distill again; the teacher and the pruning are reused
    cmd = run_cmd(runs, "--set", "distill.steps=40")
    orch = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_until(lambda: stage_step(layout, "distill-depth") >= 7, 240, "distill-depth to pass a checkpoint")
        stage_pid = read_json(layout.stage_status_file("distill-depth"))["pid"]
        assert stage_pid != orch.pid
        os.kill(orch.pid, signal.SIGKILL)
        os.kill(stage_pid, signal.SIGKILL)
        orch.wait(10)
        wait_until(lambda: not psutil.pid_exists(stage_pid) or psutil.Process(stage_pid).status() == "zombie",
                   10, "the stage to die")
    finally:
        if orch.poll() is None:
            os.killpg(orch.pid, signal.SIGKILL)
    # the run says what happened: orchestrator and stage died
    assert read_json(layout.status_file)["state"] == "running"  # as written; readers see it as dead
    from engine.contract import read_status

    assert read_status(layout.status_file)["state"] == "failed"

    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "distill-depth: resume" in out.stdout
    assert read_json(layout.status_file)["state"] == "succeeded"
    for s in STAGES:
        assert read_json(layout.stage_status_file(s))["state"] == "succeeded", s
    # stages finished before the kill ran once; the killed one resumed from its checkpoint
    assert {s: len(attempts(layout, s)) for s in STAGES} == {
        "prepare": 1, "finetune": 1, "prune-depth": 1, "prune-width": 1,
        "distill-depth": 3, "distill-width": 2, "eval": 2}
    assert "resumed from" in layout.log_file("distill-depth").read_text().split("attempt 3")[-1]
    recs, _ = read_metrics(layout.metrics_file("distill-depth"))
    steps = [r["step"] for r in recs if r.get("split") == "train"]
    assert steps == list(range(1, 41))


# ---- cancel a detached run ------------------------------------------------------------------------


@pytest.mark.slow
def test_cancel_detached_run_leaves_no_process(demo_run, tmp_path):
    runs, layout = _copy(demo_run, tmp_path)
    out = subprocess.run(run_cmd(runs, "--set", "distill.steps=200", "--detach"), cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert str(layout.root) in out.stdout
    pid = read_json(layout.status_file)["pid"]
    orch = psutil.Process(pid)
    assert os.getpgid(pid) == pid  # its own session: it outlives this shell
    wait_until(lambda: stage_step(layout, "distill-depth") >= 2, 240, "distill-depth to be training")
    family = [orch, *orch.children(recursive=True)]
    assert len(family) >= 2

    t0 = time.monotonic()
    out = subprocess.run([*engine_cmd(), "cancel", str(layout.root), "--grace", "30"], cwd=ROOT,
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 60
    gone, alive = psutil.wait_procs(family, timeout=5)
    assert not alive, f"left running: {alive}"
    mine = [p for p in psutil.process_iter(["cmdline"]) if str(runs) in " ".join(p.info["cmdline"] or [])]
    assert not mine, f"processes of the run still there: {mine}"
    assert read_json(layout.status_file)["state"] == "cancelled"
    st = read_json(layout.stage_status_file("distill-depth"))
    assert st["state"] == "cancelled"
    # SIGTERM let the stage save where it was: a resume starts from there, not from step 0
    ckpts = sorted((layout.checkpoints_dir("distill-depth")).glob("step-*"))
    assert ckpts and int(ckpts[-1].name.split("-")[1]) >= 2
    assert json.loads((ckpts[-1] / "trainer_state.json").read_text())["step"] == int(ckpts[-1].name.split("-")[1])
