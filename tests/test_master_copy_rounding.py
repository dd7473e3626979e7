"""With fp32 masters, the bf16 weights the forward uses are the masters rounded stochastically
(MasterAdamW's `round_copies`, engine/training/master_adamw.py): updates below half a bf16 ulp reach the
forward on average instead of waiting until the master has travelled half an ulp. The torch reference and
the Triton kernel (Triton's CPU interpreter: tests/conftest.py), and a resume that rounds with the bits
the uninterrupted run used."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)

from engine.training.master_adamw import MasterAdamW

ULP = 2**-7  # bf16's spacing in [1, 2): an RMSNorm weight of 1 moves only after 0.0039 with rounding to nearest
LR, STEPS, N = 1e-4, 10, 16384  # Adam moves each weight ~lr a step: 0.001 after 10 steps, a quarter of that


def _optimizer(fused: bool, round_copies: bool) -> tuple[torch.nn.Parameter, MasterAdamW]:
    if fused:
        pytest.importorskip("triton")
        assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py turns Triton's CPU interpreter on"
    p = torch.nn.Parameter(torch.ones(N))  # on the bf16 grid, as every weight of a bf16 checkpoint
    return p, MasterAdamW([p], lr=LR, weight_decay=0.0, fused=fused, round_copies=round_copies)


def _train(p: torch.nn.Parameter, opt: MasterAdamW, steps: int) -> None:
    for _ in range(steps):
        p.grad = torch.full((N,), -1.0, dtype=torch.bfloat16)  # the same direction every step
        opt.step()


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "triton"])
def test_the_forward_sees_updates_below_half_an_ulp_on_average(fused: bool) -> None:
    nearest_p, nearest = _optimizer(fused, round_copies=False)
    _train(nearest_p, nearest, STEPS)
    moved = float(nearest.master_weights()[nearest_p].mean()) - 1
    assert 0.5 * STEPS * LR < moved < ULP / 2  # the masters moved, by less than half an ulp
    assert bool((nearest_p == 1).all())  # rounded to nearest: the forward saw none of it

    p, opt = _optimizer(fused, round_copies=True)
    _train(p, opt, STEPS)
    assert float(opt.master_weights()[p].mean()) - 1 == pytest.approx(moved, rel=1e-6)  # the same masters
    seen = float(p.detach().float().mean()) - 1  # standard deviation of this mean: ~0.02 of `moved`
    assert seen == pytest.approx(moved, rel=0.1)
    assert set(p.float().unique().tolist()) == {1.0, 1.0 + ULP}  # each weight one of the master's neighbours


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "triton"])
def test_a_resume_rounds_the_masters_with_the_bits_of_their_last_step(fused: bool) -> None:
    """load_state_dict sets each bf16 parameter from its saved master as the step that wrote it did: the
    resumed run's forward weights are the uninterrupted run's, bit for bit (one skipped step included)."""
    p, opt = _optimizer(fused, round_copies=True)
    _train(p, opt, 3)
    opt.found_inf = torch.tensor(1.0)  # a skipped step: no update, the step count stays
    _train(p, opt, 1)
    opt.found_inf = None
    saved = copy.deepcopy(opt.state_dict())  # (as written to disk: not the live tensors)
    q, resumed = _optimizer(fused, round_copies=True)
    resumed.load_state_dict(saved)
    assert not torch.equal(q, opt.master_weights()[p].bfloat16())  # not rounded to nearest
    assert torch.equal(q, p)
    _train(p, opt, 2)
    _train(q, resumed, 2)
    assert torch.equal(q, p)
