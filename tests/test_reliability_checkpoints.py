"""Damaged checkpoints (issue 25): a damaged latest checkpoint is named, set aside, and the stage resumes
from the one before it, bit-identical to an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _train_util import FINETUNE, prepared_exp, run_inprocess
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)
from safetensors.torch import load_file

from engine.training.checkpoint_check import checkpoint_problem


def _small_checkpoint(root: Path) -> Path:
    from accelerate import Accelerator

    from engine.training.checkpoint import save_checkpoint

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters())
    model, opt = acc.prepare(model, opt)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return save_checkpoint(acc, root, 3, {"tokens": 12})


def test_a_checkpoint_check_names_the_damaged_file(tmp_path: Path) -> None:
    path = _small_checkpoint(tmp_path / "c")
    assert checkpoint_problem(path) is None
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-10])
    assert checkpoint_problem(path).startswith("model.safetensors: ")
    weights.write_bytes(b"\x00" * 3)
    assert "shorter than a safetensors header" in checkpoint_problem(path)
    weights.write_bytes(data)
    (path / "optimizer.bin").write_bytes(b"not a zip")
    assert checkpoint_problem(path).startswith("optimizer.bin: not a readable torch file")
    (path / "trainer_state.json").write_text("{")
    assert checkpoint_problem(path).startswith("trainer_state.json: unreadable")


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path: Path, monkeypatch, capsys) -> None:
    ref = prepared_exp(tmp_path, "ref", finetune=FINETUNE)  # 12 steps, a checkpoint every 4
    assert run_inprocess(ref, "finetune") == 0

    exp = prepared_exp(tmp_path, "run", finetune=FINETUNE)
    ckpts = tmp_path / "runs" / "run" / "finetune" / "checkpoints"
    from engine.training import loop

    save = loop.save_checkpoint

    def save_then_crash(acc, root, step, *a, **kw):  # a crash right after the checkpoint of step 8
        out = save(acc, root, step, *a, **kw)
        if step == 8:
            raise RuntimeError("planted crash")
        return out

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    assert run_inprocess(exp, "finetune") == 1
    monkeypatch.undo()
    # step 4 stays beside step 8: the last checkpoint a finite step trained from (loop.py good_at)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000004", "step-00000008"]
    damaged = ckpts / "step-00000008" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])

    capsys.readouterr()
    assert run_inprocess(exp, "finetune") == 0
    out = capsys.readouterr().out
    assert f"checkpoint {ckpts / 'step-00000008'} is damaged: model.safetensors: " in out, out
    assert f"resumed from {ckpts / 'step-00000004'} (step 4)" in out, out
    a = load_file(tmp_path / "runs" / "ref" / "finetune" / "model" / "model.safetensors")
    b = load_file(tmp_path / "runs" / "run" / "finetune" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("reference")
    assert run_inprocess(prepared_exp(root, "ref", finetune=FINETUNE), "finetune") == 0
    return load_file(root / "runs" / "ref" / "finetune" / "model" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("phase,resumes_at", [("before", 4), ("during", 4), ("after", 8)])
def test_a_kill_at_any_phase_of_a_checkpoint_write_resumes_bit_identical(tmp_path: Path, reference_weights,
                                                                        phase: str, resumes_at: int, capsys) -> None:
    """SIGKILL while the checkpoint of step 8 is written: before anything is on disk, with the temp
    folder half written, and after the rename. The rerun resumes from the last complete checkpoint and
    ends with the uninterrupted run's weights."""
    import signal
    import subprocess
    import sys
    import time

    from _train_util import ROOT, engine_env

    exp = prepared_exp(tmp_path, "run", finetune=FINETUNE)
    gates = tmp_path / "gates"
    gates.mkdir()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_paused_stage.py"), str(gates), phase, "8",
                             "finetune", str(tmp_path / "run.toml")], cwd=tmp_path, env=engine_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    while not (gates / "paused").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() - t0 < 300, "the stage never reached the phase"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpts = tmp_path / "runs" / "run" / "finetune" / "checkpoints"
    assert (ckpts / ".step-00000008.tmp").exists() == (phase == "during")

    capsys.readouterr()
    assert run_inprocess(exp, "finetune") == 0
    out = capsys.readouterr().out
    assert f"(step {resumes_at})" in out.split("resumed from", 1)[1].splitlines()[0], out
    got = load_file(tmp_path / "runs" / "run" / "finetune" / "model" / "model.safetensors")
    assert got.keys() == reference_weights.keys()
    assert all(torch.equal(got[k], reference_weights[k]) for k in got)


@pytest.mark.slow
def test_a_checkpoint_that_fails_to_load_is_named_set_aside_and_the_rerun_resumes_before_it(
        tmp_path: Path, monkeypatch, capsys, reference_weights) -> None:
    """Damage the framing check cannot see (a torch file whose member is junk): the stage stops with one
    line naming the checkpoint (exit 2, not a traceback on every rerun); the next run resumes from the
    checkpoint before it and ends bit-identical."""
    import zipfile

    exp = prepared_exp(tmp_path, "run", finetune=FINETUNE)
    ckpts = tmp_path / "runs" / "run" / "finetune" / "checkpoints"
    from engine.training import loop

    save = loop.save_checkpoint

    def save_then_crash(acc, root, step, *a, **kw):
        out = save(acc, root, step, *a, **kw)
        if step == 8:
            raise RuntimeError("planted crash")
        return out

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    assert run_inprocess(exp, "finetune") == 1
    monkeypatch.undo()
    opt = ckpts / "step-00000008" / "optimizer.bin"
    with zipfile.ZipFile(opt, "w") as z:  # a readable zip directory, a member torch cannot unpickle
        z.writestr("optimizer/data.pkl", b"junk")
    assert checkpoint_problem(ckpts / "step-00000008") is None

    capsys.readouterr()
    assert run_inprocess(exp, "finetune") == 2
    err = capsys.readouterr().err
    assert f"checkpoint {ckpts / 'step-00000008'} could not be loaded (" in err and "set aside as damaged-" in err
    assert sorted(p.name for p in ckpts.iterdir()) == ["damaged-step-00000008", "step-00000004"]
    assert run_inprocess(exp, "finetune") == 0
    got = load_file(tmp_path / "runs" / "run" / "finetune" / "model" / "model.safetensors")
    assert all(torch.equal(got[k], reference_weights[k]) for k in reference_weights)


def test_a_full_disk_says_what_a_rerun_resumes_from(tmp_path: Path, monkeypatch) -> None:
    """Disk full on a fresh run: the line promised a resume from a checkpoint that never existed."""
    from accelerate import Accelerator

    from engine import disk_space
    from engine.disk_space import DiskFull
    from engine.training.checkpoint import save_checkpoint

    acc = Accelerator(cpu=True)
    acc.prepare(torch.nn.Linear(4, 4))
    monkeypatch.setattr(disk_space, "free_bytes", lambda folder: 0)
    with pytest.raises(DiskFull, match="no checkpoint was written yet, so the stage starts again from step 0"):
        save_checkpoint(acc, tmp_path / "fresh", 3, {})
    monkeypatch.undo()
    root = _small_checkpoint(tmp_path / "c").parent
    monkeypatch.setattr(disk_space, "free_bytes", lambda folder: 0)
    with pytest.raises(DiskFull, match="it resumes from the checkpoint of step 3"):
        save_checkpoint(acc, root, 6, {})
