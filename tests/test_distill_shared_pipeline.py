"""[distill] share_teacher through the pipeline (`slimlab-engine run`, tiny models, fp32, CPU): the
three distill stages run as one process over one teacher forward, with the same metrics and final
weights as three separate processes, every stage's files in place; a cancelled shared run resumes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_util import (
    FINETUNE,
    engine_env,
    experiment_toml,
    load_exp,
    read_lines,
    run_inprocess,
    write_depth_student,
    write_prepared,
)

from engine.contract import RunLayout, read_json, stage_status_doc, write_json

STUDENTS = {"a": [0, 1], "b": [0, 2, 3], "c": [1]}  # layers of the teacher each keeps
PRUNE = "".join(f'[[prune]]\nname = "{n}"\nmethod = "depth"\ndrop_layers = {[i for i in range(4) if i not in keep]}\n'
                for n, keep in STUDENTS.items())
PRUNE = PRUNE.replace('name = "b"\nmethod = "depth"\n',
                      'name = "b"\nmethod = "depth"\ndistill = {loss = "reverse_kl", lr = 2e-3}\n')
PRUNE = PRUNE.replace('name = "c"\nmethod = "depth"\n',
                      'name = "c"\nmethod = "depth"\ndistill = {hidden_weight = 0.5, layer_map = [[0, 1]]}\n')
DISTILL = """
[distill]
steps = {steps}
global_batch_size = 8
micro_batch_size = 4
lr = 5e-3
min_lr = 5e-4
warmup_steps = 1
val_interval = 3
val_batches = 2
checkpoint_interval = 4
chunk_tokens = 48
seed = 3
"""
DISTILLS = [f"distill-{n}" for n in STUDENTS]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A run directory with a trained teacher and three pruned students, their stages succeeded."""
    root = tmp_path_factory.mktemp("shared")
    toml = root / "base.toml"
    exp = load_exp(experiment_toml("base", root / "runs", finetune=FINETUNE, prune=PRUNE,
                                   distill=DISTILL.format(steps=6)), toml)
    run = root / "runs" / "base"
    write_prepared(run / "prepare")
    assert run_inprocess(exp, "finetune") == 0
    for name, keep in STUDENTS.items():
        write_depth_student(run / "finetune" / "model", run / f"prune-{name}" / "model", keep)
    layout = RunLayout(run)
    for stage in ("prepare", "finetune", *(f"prune-{n}" for n in STUDENTS)):
        write_json(layout.stage_status_file(stage), stage_status_doc(stage, exp.stage_hash(stage), state="succeeded",
                                                                     ended_at="2020-01-01T00:00:00Z"))
    return run


def _copy(base: Path, dst: Path) -> Path:
    """A copy of the base run (dst/copy/runs/base) and of its experiment file (dst/copy/base.toml)."""
    shutil.copytree(base.parent, dst / "copy" / "runs")
    shutil.copy(base.parent.parent / "base.toml", dst / "copy" / "base.toml")
    (dst / "copy" / "unused.jsonl").write_text('{"text": "w1 w2"}\n')  # [data].train_files: prepare is done
    return dst / "copy" / "runs" / "base"


def _run(run: Path, *sets: str) -> list[str]:
    toml = run.parent.parent / "base.toml"
    return [sys.executable, "-m", "engine", "run", str(toml), "--runs-dir", str(run.parent),
            "--gpus", "none", *[x for s in DISTILLS for x in ("--only", s)],
            *[x for s in sets for x in ("--set", s)]]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_shared_teacher_run_equals_separate_runs(base: Path, tmp_path: Path) -> None:
    runs = {}
    for share in (False, True):
        run = _copy(base, tmp_path / str(share))
        p = subprocess.run(_run(run, f"distill.share_teacher={str(share).lower()}"), env=engine_env(),
                           capture_output=True, text=True, timeout=1500)
        assert p.returncode == 0, p.stdout + p.stderr
        runs[share] = (run, p.stdout)
    separate, shared = runs[False][0], runs[True][0]
    pids = {json.loads((shared / s / "status.json").read_text())["pid"] for s in DISTILLS}
    assert len(pids) == 1  # one process for the three students
    assert len({json.loads((separate / s / "status.json").read_text())["pid"] for s in DISTILLS}) == 3
    for stage in DISTILLS:
        for run in (separate, shared):
            st = read_json(run / stage / "status.json")
            assert st["state"] == "succeeded" and st["step"] == 6
            assert (run / stage / "model" / "config.json").exists() and not (run / stage / "checkpoints").exists()
            assert f"[{stage}] step 6/6" in (run / stage / "stdout.log").read_text()
        a, b = read_lines(separate / stage / "metrics.jsonl"), read_lines(shared / stage / "metrics.jsonl")
        assert [(r["step"], r["split"]) for r in a] == [(r["step"], r["split"]) for r in b]
        assert len([r for r in a if r["split"] == "val"]) == 3
        for key in ("loss", "kd_loss", "ce_loss", "grad_norm", "lr"):
            va, vb = [r[key] for r in a if r.get(key) is not None], [r[key] for r in b if r.get(key) is not None]
            assert va and vb == pytest.approx(va, rel=1e-5, abs=1e-6), (stage, key)
        wa, wb = _weights(separate / stage / "model"), _weights(shared / stage / "model")
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)
    # the students learnt different things: the equality above is not of three copies
    losses = [read_lines(shared / s / "metrics.jsonl")[-1]["loss"] for s in DISTILLS]
    assert len({round(x, 6) for x in losses}) == 3
    assert "sharing the teacher with" in (shared / "distill-b" / "stdout.log").read_text()


def _last_step(metrics: Path) -> int:
    rows = [r for r in read_lines(metrics) if r["split"] == "train"] if metrics.exists() else []
    return rows[-1]["step"] if rows else 0


def test_cancelled_shared_run_resumes_each_student(base: Path, tmp_path: Path) -> None:
    run = _copy(base, tmp_path)
    p = subprocess.Popen(_run(run, "distill.share_teacher=true", "distill.steps=400"), env=engine_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while _last_step(run / "distill-c" / "metrics.jsonl") < 2:
            assert p.poll() is None and time.monotonic() < deadline, p.stdout.read() if p.stdout else ""
            time.sleep(0.05)
        doc = read_json(run / "status.json")
        assert sorted(doc["running"]) == DISTILLS
        assert len({doc["stages"][s]["pid"] for s in DISTILLS}) == 1
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=300)[0]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, out
    stopped = {}
    for stage in DISTILLS:
        assert read_json(run / stage / "status.json")["state"] == "cancelled"
        stopped[stage] = _last_step(run / stage / "metrics.jsonl")
        assert 2 <= stopped[stage] < 400, out
        assert (run / stage / "checkpoints" / f"step-{stopped[stage]:08d}" / "trainer_state.json").exists(), out

    # the rerun resumes every student from its own checkpoint, to fewer steps (a resumable change)
    end = max(stopped.values()) + 3
    p2 = subprocess.run(_run(run, "distill.share_teacher=true", f"distill.steps={end}"), env=engine_env(),
                        capture_output=True, text=True, timeout=1500)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    for stage in DISTILLS:
        assert f"(step {stopped[stage]})" in (run / stage / "stdout.log").read_text()  # "resumed from ..."
        steps = [r["step"] for r in read_lines(run / stage / "metrics.jsonl") if r["split"] == "train"]
        assert steps == list(range(1, end + 1)), stage
        assert (run / stage / "model" / "config.json").exists()
        assert read_json(run / stage / "status.json")["state"] == "succeeded"


def test_share_teacher_is_no_per_student_key(tmp_path: Path) -> None:
    from engine.errors import ConfigError

    bad = PRUNE.replace("distill = {loss", "distill = {share_teacher = true, loss")
    with pytest.raises(ConfigError, match="distill.share_teacher is set for all students at once"):
        load_exp(experiment_toml("bad", tmp_path, finetune=FINETUNE, prune=bad, distill=DISTILL.format(steps=2)), tmp_path / "b.toml")
    # not hashed: turning it on does not rerun finished stages
    on = load_exp(experiment_toml("x", tmp_path, finetune=FINETUNE, prune=PRUNE,
                                  distill=DISTILL.format(steps=2) + "share_teacher = true\n"),
                  tmp_path / "on.toml")
    off = load_exp(experiment_toml("x", tmp_path, finetune=FINETUNE, prune=PRUNE, distill=DISTILL.format(steps=2)),
                   tmp_path / "off.toml")
    assert on.distill.share_teacher and not off.distill.share_teacher
    assert on.stage_hash("distill-b") == off.stage_hash("distill-b")
