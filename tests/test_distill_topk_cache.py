"""[distill] teacher_logits = "cached": the teacher's top-k logits stored once and read back train the
student exactly as the live teacher's top-k does; a second student reuses them; a raised `steps` adds
the windows it lacks; bad settings are refused in one line; `check` counts the cache's disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_util import (
    experiment_toml,
    load_exp,
    read_lines,
    run_inprocess,
)
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)
from test_distill_train import PRUNE, TEACHER_FT, _clone_run, distill_section, make_teacher_run

from engine.contract.layout import RunLayout
from engine.distill.teacher_topk import TopKCache

TOPK = "temperature = 2.0\ntop_k = 8\nce_weight = 0.2\n"


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    return make_teacher_run(tmp_path_factory.mktemp("topk"))


def _distil(teacher_run: Path, name: str, extra: str, tmp: Path, steps: int = 15) -> Path:
    run = teacher_run.parent / name
    if not run.exists():
        _clone_run(teacher_run, run)
    section = distill_section("forward_kl", TOPK + extra).replace("steps = 15", f"steps = {steps}")
    text = experiment_toml(name, teacher_run.parent, finetune=TEACHER_FT, prune=PRUNE, distill=section)
    assert run_inprocess(load_exp(text, tmp / f"{name}.toml"), "distill-half") == 0
    return run


def _train(run: Path) -> list[dict]:
    return [r for r in read_lines(run / "distill-half" / "metrics.jsonl") if r["split"] == "train"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "distill-half" / "model" / "model.safetensors")


def test_cached_top_k_trains_as_the_live_teacher_and_is_reused(teacher_run: Path, tmp_path: Path, capsys) -> None:
    live = _distil(teacher_run, "live", "", tmp_path)
    capsys.readouterr()
    cached = _distil(teacher_run, "cached", 'teacher_logits = "cached"\n', tmp_path)
    log = capsys.readouterr().out
    a, b = _train(live), _train(cached)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 16))
    for x, y in zip(a, b, strict=True):
        assert y["kd_loss"] == pytest.approx(x["kd_loss"], rel=1e-5, abs=1e-6)
        assert y["ce_loss"] == pytest.approx(x["ce_loss"], rel=1e-5, abs=1e-6)
    assert b[-1]["kd_loss"] < b[0]["kd_loss"]  # it learns
    wa, wb = _weights(live), _weights(cached)
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    windows = 15 * 32  # steps x global batch: every window is new to the cache
    assert f"teacher top-8 logits of {windows} windows" in log and f"0 stored, {windows} to compute" in log
    assert not RunLayout(live).teacher_topk_dir.exists()

    # a second student over the same windows reads them back: the teacher is not even loaded
    shutil.rmtree(cached / "distill-half")
    from engine.models import hf

    loaded = []
    orig = hf.load_model
    hf.load_model = lambda path, *a, **kw: loaded.append(Path(path).parent.name) or orig(path, *a, **kw)
    try:
        _distil(teacher_run, "cached", 'teacher_logits = "cached"\n', tmp_path)
    finally:
        hf.load_model = orig
    assert loaded == ["prune-half"]  # the student only (the teacher is finetune/model)
    log = capsys.readouterr().out
    assert f"{windows} stored, 0 to compute" in log
    assert [r["kd_loss"] for r in _train(cached)] == [r["kd_loss"] for r in b]


def test_raised_steps_compute_only_the_windows_the_cache_lacks(teacher_run: Path, tmp_path: Path, capsys) -> None:
    run = _distil(teacher_run, "grow", 'teacher_logits = "cached"\n', tmp_path, steps=4)
    shutil.rmtree(run / "distill-half")  # a fresh student that trains longer
    capsys.readouterr()
    _distil(teacher_run, "grow", 'teacher_logits = "cached"\n', tmp_path, steps=6)
    log = capsys.readouterr().out
    assert f"teacher top-8 logits of {6 * 32} windows" in log and f"{4 * 32} stored, {2 * 32} to compute" in log
    (folder,) = RunLayout(run).teacher_topk_dir.iterdir()
    done = np.fromfile(folder / "done.bin", dtype=np.uint8)
    assert int(done.sum()) == 6 * 32


def _cache(tmp_path: Path, k: int = 3) -> TopKCache:
    from _train_util import write_prepared

    data = tmp_path / "prepare"
    if not data.exists():
        write_prepared(data, tokens={"train": 400})
    (tmp_path / "teacher").mkdir(exist_ok=True)
    return TopKCache(tmp_path / "topk", teacher=str(tmp_path / "teacher"), data_dir=data, num_windows=10, seq=8, k=k,
                     vocab=20, dtype="float32")


def test_the_cache_stores_the_top_k_and_survives_a_killed_fill(tmp_path: Path) -> None:
    torch.manual_seed(0)
    table = torch.randn(10, 8, 30)  # window -> its logits (30 columns: 20 shared + 10 padding)

    def window(i: int) -> np.ndarray:
        return np.full(9, i, dtype=np.int64)

    def logits(inputs: torch.Tensor):
        rows = table[inputs[:, 0]].flatten(0, 1)
        yield from rows.split(5)  # in chunks, as the loss computes them

    cache = _cache(tmp_path)

    def killed(inputs: torch.Tensor):
        if 3 in inputs[:, 0].tolist():
            raise KeyboardInterrupt  # killed in the teacher's forward of the second batch
        yield from logits(inputs)

    with pytest.raises(KeyboardInterrupt):
        cache.fill([7, 1, 7, 3, 5, 0], window, killed, 2, torch.device("cpu"))
    reopened = _cache(tmp_path)
    assert reopened.missing([7, 1, 3, 5, 0, 9]) == [3, 5, 0, 9]
    assert reopened.fill([7, 3, 5, 0, 9], window, logits, 2, torch.device("cpu")) == 4
    (v, x), = reopened.batches([3, 9, 7], 3, torch.device("cpu"))
    want = table[[3, 9, 7], :, :20].topk(3, dim=-1)
    assert torch.equal(x, want.indices) and torch.equal(v, want.values)
    # another teacher, k or data opens another folder
    assert _cache(tmp_path, k=4).dir != reopened.dir and _cache(tmp_path, k=4).missing([3]) == [3]
    meta = json.loads((reopened.dir / "meta.json").read_text())
    assert meta["k"] == 3 and meta["vocab"] == 20 and meta["windows"] == 10


def test_a_new_version_of_the_teacher_removes_the_old_ones_logits(tmp_path: Path) -> None:
    old, other_k = _cache(tmp_path), _cache(tmp_path, k=4)
    assert old.remove_stale() == []  # the same teacher: nothing is stale
    (tmp_path / "teacher" / "config.json").write_text("{}")  # the teacher was trained again
    new = _cache(tmp_path)
    assert new.dir != old.dir
    assert sorted(new.remove_stale()) == sorted([old.dir, other_k.dir])
    assert [p.name for p in (tmp_path / "topk").iterdir()] == [new.dir.name]
    meta = json.loads((tmp_path / "prepare" / "meta.json").read_text())
    (tmp_path / "prepare" / "meta.json").write_text(json.dumps({**meta, "tokenizer_hash": "other"}))  # prepared again
    again = _cache(tmp_path)
    assert again.remove_stale() == [new.dir]


def test_a_lost_window_is_named(tmp_path: Path) -> None:
    from engine.errors import UserError

    with pytest.raises(UserError, match=r"windows \[2\] are not on disk.*delete the folder"):
        _cache(tmp_path).batches([2], 1, torch.device("cpu"))


@pytest.mark.slow
def test_two_processes_fill_their_own_windows_and_train_as_one(teacher_run: Path, tmp_path: Path) -> None:
    """DDP over 2 CPU processes (gloo): each rank stores the top-k of its own windows in the one folder, and
    the run equals one process reading all of them (global batch 32: 2 x 16 == 2 processes x 2 x 8)."""
    import subprocess
    import sys

    from _train_util import engine_env

    from engine.orchestration.launch import free_port

    one = _distil(teacher_run, "one", 'teacher_logits = "cached"\n', tmp_path, steps=4)
    two = teacher_run.parent / "two"
    _clone_run(teacher_run, two)
    section = (distill_section("forward_kl", TOPK + 'teacher_logits = "cached"\n')
               .replace("steps = 15", "steps = 4").replace("micro_batch_size = 16", "micro_batch_size = 8"))
    f = tmp_path / "two.toml"
    f.write_text(experiment_toml("two", teacher_run.parent, finetune=TEACHER_FT, prune=PRUNE, distill=section))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "engine", "distill", str(f), "--stage", "distill-half"]
    out = subprocess.run(cmd, cwd=tmp_path, env=engine_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 process(es), 2 micro-batch(es) of 8" in out.stdout
    a, b = _train(one), _train(two)
    assert [r["kd_loss"] for r in b] == pytest.approx([r["kd_loss"] for r in a], rel=1e-4)
    (folder,) = RunLayout(two).teacher_topk_dir.iterdir()
    assert int(np.fromfile(folder / "done.bin", dtype=np.uint8).sum()) == 4 * 32  # both ranks' windows


def test_check_predicts_the_teacher_off_the_gpu_and_counts_the_cache(tmp_path: Path) -> None:
    """At the seed's 8B shapes: the cached width student's peak drops by the teacher (its training no longer
    holds it; its teacher pass is smaller), the cache's disk is counted (in the dtype the logits are computed
    in), and a search's audit keeps the teacher in its prediction (the prune stage holds it)."""
    from engine.config import loads_experiment
    from engine.resources.inputs import experiment_shapes
    from engine.resources.plan import stage_disk, stage_need

    text = (Path(__file__).resolve().parent.parent / "experiments" / "llama31-8b-one-gpu.toml").read_text()
    live = loads_experiment(text, source="8b.toml")
    cached = loads_experiment(text.replace("[distill]", '[distill]\ntop_k = 64\nteacher_logits = "cached"'),
                              source="8b.toml")
    shapes = experiment_shapes(live)
    a, b = stage_need(live, shapes, "distill-width", 1, True), stage_need(cached, shapes, "distill-width", 1, True)
    assert a.term("teacher") > 14 * 2**30 and b.term("teacher") == 0
    assert a.total - b.total == pytest.approx(a.term("teacher") + a.term("teacher outputs"), rel=0.02)
    steps, batch, seq = cached.distill.steps, cached.distill.global_batch_size, cached.data.seq_length
    assert stage_disk(cached, shapes, "distill-width", 1, True).cache == steps * batch * seq * 64 * (2 + 4)
    assert stage_disk(live, shapes, "distill-width", 1, True).cache == 0
    fp32 = loads_experiment(text.replace('dtype = "bfloat16"', 'dtype = "float32"').replace(
        "[distill]", '[distill]\ntop_k = 64\nteacher_logits = "cached"'), source="8b.toml")
    assert fp32.model.dtype == "float32"  # fp32 weights, bf16 autocast: the logits are still bf16
    assert stage_disk(fp32, shapes, "distill-width", 1, True).cache == steps * batch * seq * 64 * (2 + 4)
    assert stage_disk(cached, shapes, "distill-width", 1, False).cache == steps * batch * seq * 64 * (4 + 4)
    search = text.replace("[distill]", '[[prune]]\nname = "s"\nmethod = "search"\ntarget_params = 0.56\n'
                                       'top_k = 3\naudit = 2\n\n[distill]\ntop_k = 64\nteacher_logits = "cached"')
    audited = loads_experiment(search, source="8b.toml")
    audit_need = stage_need(audited, experiment_shapes(audited), "prune-s", 1, True)
    assert audit_need.term("teacher") > 14 * 2**30  # the audit runs the teacher live


def test_a_float8_teacher_stores_logits_of_its_own(teacher_run: Path, tmp_path: Path, capsys) -> None:
    """float8 = true changes the teacher's logits: they go to a cache folder of their own, beside (not over)
    the plain teacher's, and the stage trains on them (float8 matmuls run on the CPU too, slowly)."""
    pytest.importorskip("torchao")
    run = _distil(teacher_run, "f8", 'teacher_logits = "cached"\n', tmp_path, steps=2)
    shutil.rmtree(run / "distill-half")
    capsys.readouterr()
    _distil(teacher_run, "f8", 'teacher_logits = "cached"\nfloat8 = true\n', tmp_path, steps=2)
    log = capsys.readouterr().out
    assert f"0 stored, {2 * 32} to compute" in log and "float8 matmuls in" in log
    metas = [json.loads((d / "meta.json").read_text()) for d in RunLayout(run).teacher_topk_dir.iterdir()]
    assert sorted(m.get("float8", False) for m in metas) == [False, True]
    assert len(_train(run)) == 2
