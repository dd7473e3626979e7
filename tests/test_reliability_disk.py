"""A full disk (issue 16, item 7): a checkpoint that does not fit is refused before it is written, or
removed when the disk fills up while it is written; either way one line names the folder and the space
needed, the previous checkpoint stays, and the stage records its failure. The orchestrator and a
stage's status survive their own failed writes. On a real 2 MiB tmpfs where mounting is allowed
(root), and by injecting ENOSPC at the write layer everywhere."""

from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path

import pytest
from _train_util import FINETUNE, prepared_exp, run_inprocess
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)
from test_pipeline import _exp, _orchestrate, fake_stages  # noqa: F401  (fake_stages: a fixture)

# checkpoints every 4 steps; the tiny model's checkpoint takes ~1.1 MB
DISK_FINETUNE = FINETUNE.replace("steps = 12", "steps = 9")


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)  # lazy: a log still open


def _assert_failed_cleanly(stage: Path, err: str) -> None:
    ckpts = stage / "checkpoints"
    assert err.count("\n") == 1 and err.startswith(f"error: no space left in {ckpts}: ")
    assert "the checkpoint of step 8 needs about" in err
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000004"]  # the previous one, nothing partial
    assert (ckpts / "step-00000004" / "trainer_state.json").exists()
    status = json.loads((stage / "status.json").read_text())
    assert status["state"] == "failed" and status["error"]["type"] == "DiskFull"
    assert str(ckpts) in status["error"]["message"] and "needs about" in status["error"]["message"]


def test_a_checkpoint_that_does_not_fit_a_small_tmpfs_is_refused(small_tmpfs: Path, tmp_path: Path, capsys):
    """2 MiB: data, logs and the step-4 checkpoint fit, the step-8 one cannot be written beside it."""
    exp = prepared_exp(small_tmpfs, "full", finetune=DISK_FINETUNE)
    assert run_inprocess(exp, "finetune") == 2
    stage = small_tmpfs / "runs" / "full" / "finetune"
    _assert_failed_cleanly(stage, capsys.readouterr().err)


@pytest.mark.parametrize("raised", ["oserror", "torch"])
def test_a_disk_that_fills_up_during_the_checkpoint_leaves_no_partial_write(tmp_path: Path, capsys, monkeypatch,
                                                                            raised: str) -> None:
    """The space check passes, then the write runs out (another writer took the space): the partial
    directory goes, one line, the previous checkpoint stays. torch's zip writer says 'unexpected pos'."""
    from accelerate import Accelerator

    save_state = Accelerator.save_state
    calls = {"n": 0}

    def filling_save_state(self, output_dir, **kw):
        calls["n"] += 1
        if calls["n"] < 2:
            return save_state(self, output_dir, **kw)
        (Path(output_dir) / "optimizer.bin").write_bytes(b"\0" * 4096)  # half-written
        e = OSError(errno.ENOSPC, "No space left on device")
        if raised == "torch":
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 3988") from e
        raise e

    monkeypatch.setattr(Accelerator, "save_state", filling_save_state)
    exp = prepared_exp(tmp_path, "fill", finetune=DISK_FINETUNE)
    assert run_inprocess(exp, "finetune") == 2
    _assert_failed_cleanly(tmp_path / "runs" / "fill" / "finetune", capsys.readouterr().err)


def _failing_writes(monkeypatch, should_fail) -> None:
    import engine.contract.files as files

    write_json = files.write_json

    def failing(path, obj):
        if should_fail(Path(path)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_json(path, obj)

    monkeypatch.setattr(files, "write_json", failing)


def test_a_stage_status_that_cannot_be_written_warns_once_and_goes_on(tmp_path: Path, monkeypatch, capsys):
    from engine.contract import StageStatus

    _failing_writes(monkeypatch, lambda p: True)
    st = StageStatus(tmp_path / "s", "finetune")
    st.start(total_steps=3)
    st.update(step=1)
    st.finish("failed", "whatever")
    err = capsys.readouterr().err
    assert err.count("warning: cannot write") == 1 and "No space left on device" in err


def test_the_orchestrator_survives_its_own_status_write_failing(tmp_path: Path, monkeypatch, capsys,
                                                                 fake_stages):  # noqa: F811
    """The run's status.json cannot be written (a full disk): one warning, the stages still run."""
    exp = _exp(tmp_path)
    run_status = Path(exp.run_dir) / "status.json"
    _failing_writes(monkeypatch, lambda p: p == run_status)
    rc, out, _ = _orchestrate(exp)
    assert rc == 0, out
    err = capsys.readouterr().err
    assert err.count(f"warning: cannot write {run_status}") == 1
