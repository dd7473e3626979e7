"""master_weights = "stochastic": bf16 weights without fp32 masters, updated with stochastic rounding
(engine/training/master_adamw.py stochastic_round, the Triton kernel in engine/training/adamw_triton.py
run in Triton's CPU interpreter: tests/conftest.py), and what the config, the Trainer, checkpoints and
the memory plan make of it."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)

from engine.config import ConfigError, load_experiment
from engine.training.master_adamw import adamw_reference, stochastic_round

ULP = 2**-7  # bf16's spacing in [1, 2)
QUARTER = 1 + ULP / 4  # a quarter of the way from 1 to the next bf16: round to nearest always gives 1


# ---- the rounding --------------------------------------------------------------------------------


def _kernel():
    pytest.importorskip("triton")
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py turns Triton's CPU interpreter on"
    from engine.training.adamw_triton import adamw_update

    return adamw_update


def _round(update, w: torch.Tensor, factor: torch.Tensor, step: int, index: int | None) -> torch.Tensor:
    """bf16 `w` times `factor` (an fp32 value most often between two bf16 numbers), stored by `update`
    (adamw_reference or the Triton kernel) into the bf16 weight: grad 0 and zero moments leave the
    decoupled weight decay w * (1 - lr * wd) as the whole update, with lr * wd = 1 - factor."""
    p = w.clone()
    zeros = torch.zeros(w.shape)
    update(p, torch.zeros(w.shape, dtype=torch.bfloat16), p, zeros.clone(), zeros.clone(),
           torch.tensor(float(step)), (1 - factor).reshape(()), torch.tensor(1.0), torch.tensor(False),
           0.9, 0.95, 1e-8, 1.0, **({} if index is None else {"sr_index": index}))
    return p


def _neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 numbers on either side of fp32 `x` (toward zero, away from zero), as bit patterns."""
    low = x.view(torch.int32) & -65536
    return low, low + 65536


def _updates() -> list:
    return [adamw_reference, _kernel()]


@pytest.mark.parametrize("which", ["reference", "triton"])
def test_every_output_is_one_of_the_two_bf16_neighbours(which: str) -> None:
    update = adamw_reference if which == "reference" else _kernel()
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5000, generator=gen).bfloat16()  # (not a multiple of the kernel's block)
    factor = torch.tensor(1 + 3e-3)
    exact = w.float() * factor  # the fp32 value the update computes
    got = _round(update, w, factor, step=3, index=5).float().view(torch.int32)
    low, high = _neighbours(exact)
    assert bool(((got == low) | (got == high)).all())
    exact_ones = (exact.view(torch.int32) & 65535) == 0
    assert bool((got[exact_ones] == low[exact_ones]).all())  # a bf16 number stays itself
    # both ways occur, in proportion to the remainder: the fraction rounded up is the mean remainder
    up = (got == high) & ~exact_ones
    remainder = (exact.view(torch.int32) & 65535).float() / 65536
    assert abs(up.float().mean() - remainder.mean()) < 0.02


@pytest.mark.parametrize("which", ["reference", "triton"])
def test_stochastic_rounding_is_unbiased_where_round_to_nearest_is_not(which: str) -> None:
    """1 + ulp/4 (and its negative): round to nearest always gives 1 (error -ulp/4); stochastic rounding
    gives 1 + ulp a quarter of the time, over elements and steps: the mean error is ~0 (the mean of
    16 x 2048 draws has a standard deviation of 0.0024 ulp; the bound is 0.02 ulp)."""
    update = adamw_reference if which == "reference" else _kernel()
    for sign in (1.0, -1.0):
        w = torch.full((2048,), sign, dtype=torch.bfloat16)
        factor = torch.tensor(QUARTER)
        nearest = _round(update, w, factor, step=1, index=None)
        assert bool((nearest.float() == sign).all())  # biased: the quarter ulp is lost every time
        errors = [(_round(update, w, factor, step, index=2).float() - sign * QUARTER).mean() for step in range(1, 17)]
        mean = float(torch.stack(errors).mean())
        assert abs(mean) < 0.02 * ULP, mean
        assert abs(float(nearest.float().mean()) - sign * QUARTER) == pytest.approx(ULP / 4)


@pytest.mark.parametrize("which", ["reference", "triton"])
def test_non_finite_values_pass_through_as_with_round_to_nearest(which: str) -> None:
    update = adamw_reference if which == "reference" else _kernel()
    w = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -2.0]).bfloat16()
    factor = torch.tensor(QUARTER)
    got = _round(update, w, factor, step=4, index=0)
    nearest = _round(update, w, factor, step=4, index=None)
    assert torch.equal(got[1:3], nearest[1:3]) and bool(got[:1].isnan().all() and nearest[:1].isnan().all())
    assert bool(torch.isfinite(got[3:]).all())


@pytest.mark.parametrize("which", ["reference", "triton"])
def test_the_same_step_and_index_give_the_same_bits(which: str) -> None:
    update = adamw_reference if which == "reference" else _kernel()
    w = torch.randn(3000, generator=torch.Generator().manual_seed(1)).bfloat16()
    factor = torch.tensor(1 + 1e-3)
    first = _round(update, w, factor, step=7, index=3)
    assert torch.equal(first, _round(update, w, factor, step=7, index=3))
    assert not torch.equal(first, _round(update, w, factor, step=8, index=3))
    assert not torch.equal(first, _round(update, w, factor, step=7, index=4))


def test_stochastic_round_of_the_reference_matches_its_description() -> None:
    """The helper alone: exact bf16 values stay; halfway values go either way."""
    x = torch.tensor([1.0, -3.0, 1 + ULP / 2, -(1 + ULP / 2)]).repeat(512)
    got = stochastic_round(x, torch.tensor(9.0), 1).float()
    assert torch.equal(got[0::4], x[0::4]) and torch.equal(got[1::4], x[1::4])
    assert 0.4 < float((got[2::4] > 1).float().mean()) < 0.6
    assert 0.4 < float((got[3::4] < -1).float().mean()) < 0.6


# ---- training: against fp32 masters, and resuming ------------------------------------------------

ARCH = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
LR, STEPS = 1e-4, 200  # Adam moves a weight ~lr a step: below half a bf16 ulp for |w| >= 2^-6 (std 0.02)
SR_TOLERANCE = 0.002  # README.md (master_weights): the stochastic loss curve stays this close to the masters'
NEAREST_DRIFT = 0.02  # and round to nearest without masters ends at least this far off


def _trainer(mode: bool | str, nearest: bool = False):
    """A tiny Llama on the CPU with the master-weights path forced on (bf16 weights in MasterAdamW, torch
    ops). `nearest`: no masters and no stochastic rounding (the update rounds to nearest)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.config import TrainConfig
    from engine.distill.losses import LossSpec
    from engine.training.setup import make_accelerator
    from engine.training.step import Trainer

    torch.manual_seed(0)
    cfg = TrainConfig(steps=STEPS, global_batch_size=4, micro_batch_size=4, warmup_steps=0, weight_decay=0.0)
    t = Trainer(make_accelerator(), LlamaForCausalLM(LlamaConfig(**ARCH)), cfg, LossSpec("ce", chunk_tokens=64),
                master_weights=mode)
    if nearest:
        opt = t._master()
        opt._update = functools.partial(lambda *a, sr_index: adamw_reference(*a))
    return t


def _batches(n: int) -> list[torch.Tensor]:
    return [torch.randint(0, 64, (4, 33), generator=torch.Generator().manual_seed(i)) for i in range(n)]


def _losses(t, batches: list[torch.Tensor]) -> list[float]:
    try:
        return [t.step([b], lr=LR).loss for b in batches]
    finally:
        t.release()


def test_stochastic_rounding_tracks_fp32_masters_where_round_to_nearest_drifts() -> None:
    """200 steps at lr 1e-4 over 4 fixed batches (measured: the masters' loss 4.17 -> 3.95; stochastic
    rounding within 0.0006 of it at every step; round to nearest 0.052 above it at the end)."""
    batches = _batches(4) * (STEPS // 4)
    masters = _losses(_trainer(True), batches)
    sr_trainer = _trainer("stochastic")
    assert sr_trainer.precision == "bf16 weights, stochastic rounding, no fp32 masters"
    assert all(set(st) == {"step", "exp_avg", "exp_avg_sq"} for st in sr_trainer._master().state.values())
    stochastic = _losses(sr_trainer, batches)
    nearest = _losses(_trainer("stochastic", nearest=True), batches)
    assert masters[-1] < masters[0] - 0.1  # it trains
    assert max(abs(a - b) for a, b in zip(stochastic, masters, strict=True)) < SR_TOLERANCE
    assert nearest[-1] - masters[-1] > NEAREST_DRIFT  # updates below half an ulp rounded away


def _checkpoint(t, root: Path, step: int) -> Path:
    from engine.training.checkpoint import save_checkpoint

    return save_checkpoint(t.accelerator, root, step, {"resume_key": "k"})


def test_a_stochastic_run_resumes_bit_for_bit_and_keeps_its_bf16_weights_in_the_checkpoint(tmp_path) -> None:
    from engine.training.checkpoint import MASTERS_ONLY, checkpoint_bytes, load_checkpoint

    batches = _batches(8)
    first = _trainer("stochastic")
    for b in batches[:4]:
        first.step([b], lr=LR)
    path = _checkpoint(first, tmp_path, 4)
    assert not (path / MASTERS_ONLY).exists()
    n = sum(p.numel() for p in first.params)
    assert (path / "model.safetensors").stat().st_size >= 2 * n  # the bf16 weights: the only copy
    assert checkpoint_bytes(first.accelerator, first.not_in_checkpoint) >= 2 * n + 8 * n

    resumed = _trainer("stochastic")
    load_checkpoint(resumed.accelerator, path)
    for p, q in zip(first.params, resumed.params, strict=True):
        assert p.dtype == q.dtype == torch.bfloat16 and torch.equal(p, q)
    for b in batches[4:]:
        assert first.step([b], lr=LR).loss == resumed.step([b], lr=LR).loss
    for p, q in zip(first.params, resumed.params, strict=True):
        assert torch.equal(p, q)  # the same rounding bits after the resume: (step, index) decide them
    first.release()
    resumed.release()


@pytest.mark.parametrize(("saved", "resumed"), [(True, "stochastic"), ("stochastic", True)])
def test_a_checkpoint_resumes_across_masters_and_stochastic_rounding(tmp_path, saved, resumed) -> None:
    """fp32 masters -> stochastic: the weights are the masters rounded to nearest (as the masters run's
    bf16 weights are); stochastic -> masters: the masters start as the saved bf16 weights. Either way the
    resumed run starts from the same bf16 weights and moments, and the resume key does not change."""
    from engine.config import loads_experiment
    from engine.training.checkpoint import load_checkpoint, resume_key

    batches = _batches(6)
    first = _trainer(saved)
    for b in batches[:3]:
        first.step([b], lr=LR)
    path = _checkpoint(first, tmp_path, 3)
    other = _trainer(resumed)
    load_checkpoint(other.accelerator, path)
    for p, q in zip(first.params, other.params, strict=True):
        assert q.dtype == torch.bfloat16 and torch.equal(p, q)
        before, after = first._master().state[p], other._master().state[q]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(before[key], after[key])
        if resumed is True:
            assert torch.equal(after["master"], q.float())
        else:
            assert "master" not in after
    assert first.step([batches[3]], lr=LR).loss == other.step([batches[3]], lr=LR).loss
    losses = [other.step([b], lr=LR).loss for b in batches[4:]]
    assert all(torch.isfinite(torch.tensor(losses)))
    first.release()
    other.release()
    base = ('name = "t"\n[model]\npath = "m"\n[data]\ndataset = "w"\n[distill]\nsteps = 3\n'
            '[[prune]]\nname = "d"\nmethod = "depth"\nnum_layers = 1\n')
    keys = {mode: resume_key(loads_experiment(base.replace("steps = 3", f"steps = 3\nmaster_weights = {mode}")),
                             "distill-d") for mode in ("true", '"stochastic"', "false")}
    assert keys["true"] == keys['"stochastic"'] != keys["false"]


# ---- the memory plan, check and the config -------------------------------------------------------


def _exp(tmp_path: Path, extra: str = ""):
    from tests.test_resources import _big_toml

    return load_experiment(_big_toml(tmp_path, hidden=1024, layers=10, extra=extra))


def test_the_prediction_drops_the_fp32_masters_4_bytes_a_parameter(tmp_path) -> None:
    from engine.config.shape import count_params
    from engine.resources.plan import experiment_shapes, stage_disk, stage_need

    exp = _exp(tmp_path)
    shapes = experiment_shapes(exp)
    n = count_params(shapes.teacher)  # finetune trains the teacher
    masters = stage_need(exp, shapes, "finetune", 1, True)
    disk = stage_disk(exp, shapes, "finetune", 1, True)
    exp.finetune.master_weights = "stochastic"
    stochastic = stage_need(exp, shapes, "finetune", 1, True)
    assert masters.total - stochastic.total == 4 * n
    assert masters.parts["master"] == 4 * n and "master" not in stochastic.parts
    assert stochastic.parts["weights"] == masters.parts["weights"] == 2 * n
    # checkpoints: the bf16 weights (2 bytes) in place of the fp32 masters (4)
    assert disk.checkpoint - stage_disk(exp, shapes, "finetune", 1, True).checkpoint == 2 * n
    # on the CPU (no master weights) it is the fp32 path, as true is
    cpu = stage_need(exp, shapes, "finetune", 1, False).total
    exp.finetune.master_weights = True
    assert stage_need(exp, shapes, "finetune", 1, False).total == cpu


def test_check_offers_stochastic_rounding_where_it_is_the_knob_that_fits(tmp_path, monkeypatch) -> None:
    """With every layer recomputed and bf16 moments already, on a GPU between what the stage needs with
    and without the fp32 masters, the refusal names master_weights = "stochastic", and with it set the
    same check passes."""
    from engine.resources import fit
    from engine.resources.plan import experiment_shapes, stage_need

    monkeypatch.setattr(fit, "free_bytes", lambda _p: 2**50)
    exp = _exp(tmp_path, 'gradient_checkpointing = true\noptimizer_states = "bfloat16"')
    shapes = experiment_shapes(exp)
    masters = stage_need(exp, shapes, "finetune", 1, True).total
    exp.finetune.master_weights = "stochastic"
    stochastic = stage_need(exp, shapes, "finetune", 1, True).total
    exp.finetune.master_weights = True
    machine = fit.Machine(gpus=1, gpu_bytes=(masters + stochastic) // 2 + fit.GPU_RESERVED, gpu_name="GPU",
                          host_bytes=100 * 2**30)
    with pytest.raises(ConfigError) as e:
        fit.resource_lines(exp, machine)
    assert 'set finetune.master_weights = "stochastic" (~' in str(e.value)
    exp.finetune.master_weights = "stochastic"
    assert any("finetune" in line for line in fit.resource_lines(exp, machine))


def test_check_refuses_stochastic_rounding_under_fsdp_and_values_it_does_not_know(tmp_path) -> None:
    from tests.test_resources import _big_toml, _engine

    f = _big_toml(tmp_path, hidden=64, layers=2, extra='master_weights = "stochastic"\n[launch]\nstrategy = "fsdp"')
    r = _engine("check", f)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert ('master_weights: "stochastic" in [finetune] is not available under [launch] strategy = "fsdp"'
            in r.stderr and 'set master_weights = true or strategy = "ddp"' in r.stderr)
    with pytest.raises(ConfigError, match='master_weights: "yes" is neither true/false nor "stochastic"'):
        load_experiment(_big_toml(tmp_path, hidden=64, layers=2, extra='master_weights = "yes"'))
    assert load_experiment(_big_toml(tmp_path, hidden=64, layers=2, extra="master_weights = false"))
