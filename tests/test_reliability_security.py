"""Security (issue 25): nothing in a run directory can run code on resume, and no file of the tree
loads pickles unsafely."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _experiments import scratch_toml

ROOT = Path(__file__).resolve().parent.parent


class _Planted:
    """Unpickling this opens (creates) a file: proof that the pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_pickle_planted_in_a_checkpoint_does_not_run_on_resume(tmp_path: Path) -> None:
    import torch
    from accelerate import Accelerator

    from engine.errors import UserError
    from engine.training.checkpoint import load_checkpoint, save_checkpoint

    acc = Accelerator(cpu=True)
    acc.prepare(torch.nn.Linear(2, 2))
    path = save_checkpoint(acc, tmp_path / "checkpoints", 3, {"tokens": 12})
    marker = tmp_path / "code-ran"
    torch.save({"torch_manual_seed": _Planted(marker), "random_state": _Planted(marker)},
               path / "random_states_0.pkl")
    with pytest.raises(UserError, match="random_states_0.pkl missing, unreadable or not a plain RNG state"):
        load_checkpoint(acc, path)
    assert not marker.exists()


UNSAFE = re.compile(r"weights_only\s*=\s*False|allow_pickle\s*=\s*True|pickle\.loads?\(|yaml\.load\(|"
                    r"trust_remote_code\s*=\s*True|shell\s*=\s*True")


def test_no_unsafe_load_anywhere_in_the_tree() -> None:
    """torch.load(weights_only=False), np.load(allow_pickle=True), pickle.load, yaml.load, remote code or a
    shell: none in engine/, app/ or benchmarks/ (tests plant them on purpose, so they are not searched)."""
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
             for d in ("engine", "app", "benchmarks") for p in sorted((ROOT / d).rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if UNSAFE.search(line)]
    assert not found, "\n".join(found)


SLURM_TOML = """
name = "sx"
[model]
path = "some/model"
[data]
dataset = "builtin:stdlib-docs"
[finetune]
steps = 3
[launch]
nodes = 2
"""


def _slurm(tmp_path: Path, capsys, *args: str) -> tuple[int, str]:
    from engine.cli import main

    f = tmp_path / "sx.toml"
    f.write_text(SLURM_TOML)
    rc = main(["run", str(f), "--slurm", "--gpus-per-node", "4", *args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("args", [("--runs-dir", "runs\ntouch INJECTED"),
                                  ("--runs-dir", "runs", "--sbatch=--partition=gpu\ntouch INJECTED"),
                                  ("--runs-dir", "runs", "--sbatch=touch INJECTED"),
                                  ("--runs-dir", 'ru"ns')])
def test_the_slurm_script_refuses_what_would_break_out_of_its_lines(tmp_path: Path, capsys, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    rc, err = _slurm(tmp_path, capsys, *args)
    assert rc == 2 and err.count("\n") == 1, err
    assert not list(tmp_path.rglob("slurm.sbatch")) and not list(tmp_path.rglob("experiment.toml")), "written"


def test_the_slurm_script_quotes_a_runs_dir_with_spaces(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = _slurm(tmp_path, capsys, "--runs-dir", "my runs")
    assert rc == 0, err
    script = (tmp_path / "my runs" / "sx" / "slurm.sbatch").read_text()
    assert f'#SBATCH --output="{tmp_path}/my runs/sx/slurm-%j.log"' in script.splitlines()
    assert f"--runs-dir '{tmp_path}/my runs'" in script


def test_gpus_per_node_zero_is_named_as_such(tmp_path: Path, capsys, monkeypatch):
    from engine.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sx.toml").write_text(SLURM_TOML)
    assert main(["run", "sx.toml", "--slurm", "--gpus-per-node", "0"]) == 2
    assert "--gpus-per-node: 0;" in capsys.readouterr().err


# ---- symbolic links in a run directory ------------------------------------------------------------

LINKED = scratch_toml("ln", data='train_files = ["train.jsonl"]', finetune="steps = 2\nglobal_batch_size = 4\nmicro_batch_size = 4")


def _linked_run(tmp_path: Path, entry: str, target_is_dir: bool) -> tuple[Path, Path]:
    """runs/ln/<entry> is a link to a precious file or folder outside the run; returns (experiment, target)."""
    (tmp_path / "train.jsonl").write_text("".join(f'{{"text": "line {i} of the data"}}\n' for i in range(50)))
    f = tmp_path / "ln.toml"
    f.write_text(LINKED)
    target = tmp_path / "precious"
    if target_is_dir:
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    else:
        target.write_text("mine")
    link = tmp_path / "runs" / "ln" / entry
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=target_is_dir)
    return f, target


@pytest.mark.parametrize("entry,is_dir", [("finetune", True), ("run.lock", False), ("finetune/stdout.log", False),
                                          ("prepare", True)])
def test_run_refuses_a_run_directory_with_links_that_leave_it(tmp_path: Path, capsys, monkeypatch, entry, is_dir):
    from engine.cli import main

    monkeypatch.chdir(tmp_path)
    if "/" in entry:
        (tmp_path / "runs" / "ln" / entry.split("/")[0]).mkdir(parents=True)
    f, target = _linked_run(tmp_path, entry, is_dir)
    assert main(["run", str(f), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a symbolic link to" in err and "outside the run directory" in err, err
    assert (target / "keep.txt" if is_dir else target).read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "runs" / "ln").iterdir()) == [entry.split("/")[0]]


def test_a_single_stage_refuses_links_that_leave_the_run_too(tmp_path: Path, capsys, monkeypatch):
    from engine.cli import main

    monkeypatch.chdir(tmp_path)
    f, target = _linked_run(tmp_path, "prepare", True)
    assert main(["prepare", str(f), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "is a symbolic link to" in capsys.readouterr().err
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_run_files_are_never_opened_through_a_link(tmp_path: Path) -> None:
    """Behind the up-front check, each writer refuses a link on its own (O_NOFOLLOW, no rmtree through it)."""
    import errno

    from engine.config import ConfigError
    from engine.contract import RunLayout, append_metrics
    from engine.contract.files import open_append
    from engine.orchestration.run_lock import RunLock
    from engine.orchestration.stage_actions import clear_stage

    target = tmp_path / "precious"
    target.write_text("mine")
    run = tmp_path / "run"
    (run / "finetune").mkdir(parents=True)
    for name in ("run.lock", "finetune/stdout.log", "finetune/metrics.jsonl"):
        (run / name).symlink_to(target)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        RunLock(run).acquire()
    with pytest.raises(OSError) as e:
        open_append(run / "finetune" / "stdout.log")
    assert e.value.errno == errno.ELOOP
    with pytest.raises(OSError):
        append_metrics(run / "finetune" / "metrics.jsonl", {"step": 1})
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    (run / "prune-depth").symlink_to(folder, target_is_directory=True)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        clear_stage(RunLayout(run), "prune-depth")
    assert target.read_text() == "mine" and (folder / "keep.txt").read_text() == "mine"
