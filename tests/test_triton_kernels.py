"""The Triton kernels (CUDA in training) against their torch references, run in Triton's CPU
interpreter (TRITON_INTERPRET=1, set in tests/conftest.py): the fused AdamW update of MasterAdamW
and the forward-KL chunk."""

from __future__ import annotations

import os

import pytest
import torch
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def kernels():
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py turns Triton's CPU interpreter on"
    from engine.distill import kl_triton
    from engine.training import adamw_triton

    return adamw_triton, kl_triton


def _state(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    master = torch.randn(n, generator=gen)
    return {"param": master.bfloat16(), "grad": torch.randn(n, generator=gen).bfloat16(), "master": master,
            "exp_avg": torch.randn(n, generator=gen) * 0.1, "exp_avg_sq": torch.rand(n, generator=gen) * 0.01}


@pytest.mark.parametrize("own_master", [False, True])
@pytest.mark.parametrize("skip", [False, True])
def test_adamw_kernel_with_bf16_moments_equals_reference(kernels, skip: bool, own_master: bool) -> None:
    """optimizer_states = "bfloat16": the kernel loads bf16 moments, updates in fp32 and stores them
    back in bf16, like adamw_reference; `own_master`: fp32 parameters that are their own masters."""
    from engine.training.master_adamw import adamw_reference

    adamw_triton, _ = kernels
    n = 5000
    ref, got = _state(n, 0), _state(n, 0)
    for st in (ref, got):
        st["exp_avg"], st["exp_avg_sq"] = st["exp_avg"].bfloat16(), st["exp_avg_sq"].bfloat16()
        if own_master:
            st["param"] = st["master"]
    scalars = (torch.tensor(3.0), torch.tensor(1e-2), torch.tensor(0.5), torch.tensor(skip), 0.9, 0.95, 1e-8, 0.1)
    before = {k: v.clone() for k, v in got.items()}
    adamw_reference(*ref.values(), *scalars)
    adamw_triton.adamw_update(*got.values(), *scalars)
    assert got["exp_avg"].dtype == got["exp_avg_sq"].dtype == torch.bfloat16
    # the master is computed from the fp32 moments before they are rounded: as exact as with fp32 state
    torch.testing.assert_close(got["master"], ref["master"], rtol=1e-5, atol=1e-7)
    for key in ("exp_avg", "exp_avg_sq"):  # one bf16 rounding apart at most (the interpreter truncates)
        torch.testing.assert_close(got[key].float(), ref[key].float(), rtol=2**-7, atol=1e-30, msg=key)
        assert torch.equal(got[key], before[key]) == skip
    if own_master:
        assert got["param"] is got["master"] and got["param"].dtype == torch.float32
    assert torch.equal(got["master"], before["master"]) == skip
    if not skip:  # the moments really moved, by more than a bf16 rounding
        assert (got["exp_avg"].float() - before["exp_avg"].float()).abs().max() > 0.05


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("grad_fp32", [False, True])
def test_adamw_kernel_equals_reference(kernels, skip: bool, grad_fp32: bool) -> None:
    from engine.training.master_adamw import adamw_reference

    adamw_triton, _ = kernels
    n = 5000  # not a multiple of the block: the tail is masked
    ref, got = _state(n, 0), _state(n, 0)
    if grad_fp32:  # the fp32 sums of accumulated micro-batches
        ref["grad"] = got["grad"] = torch.randn(n, generator=torch.Generator().manual_seed(1))
    scalars = (torch.tensor(3.0), torch.tensor(1e-2), torch.tensor(0.5), torch.tensor(skip), 0.9, 0.95, 1e-8, 0.1)
    before = {k: v.clone() for k, v in got.items()}
    adamw_reference(*ref.values(), *scalars)
    adamw_triton.adamw_update(*got.values(), *scalars)
    for key in ("master", "exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-7, msg=key)
    # the bf16 parameter is its master rounded (to nearest on GPUs; the interpreter truncates)
    torch.testing.assert_close(got["param"].float(), got["master"], rtol=2**-7, atol=0)
    assert torch.equal(got["master"], before["master"]) == skip


def test_master_adamw_fused_equals_torch_ops(kernels) -> None:
    from engine.training.master_adamw import MasterAdamW

    gen = torch.Generator().manual_seed(2)
    shapes = [(30, 70), (33,)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    opt_a, opt_b = MasterAdamW(a, lr=1e-2), MasterAdamW(b, lr=1e-2, fused=True)
    for i in range(3):
        for p, q in zip(a, b, strict=True):
            p.grad = q.grad = torch.randn(p.shape, generator=gen).bfloat16()
        opt_a.found_inf = opt_b.found_inf = torch.tensor(float(i == 1))
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(opt_b.master_weights()[q], opt_a.master_weights()[p], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("master", [True, False])
def test_master_adamw_fused_with_bf16_moments_follows_torch_ops(kernels, master: bool) -> None:
    """Steps of the kernel against the torch ops, both with bf16 moments. The interpreter truncates
    where GPUs round to nearest (as torch does), so after each step compared the kernel's moments
    restart from the torch ones: each step is checked alone."""
    from engine.training.master_adamw import MasterAdamW

    gen = torch.Generator().manual_seed(2)
    shapes = [(30, 70), (33,)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    kw = dict(lr=1e-2, state_dtype=torch.bfloat16, dtype=torch.bfloat16 if master else None)
    opt_a, opt_b = MasterAdamW(a, **kw), MasterAdamW(b, fused=True, **kw)
    for _ in range(4):
        for p, q in zip(a, b, strict=True):
            p.grad = q.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt_a.step()
        opt_b.step()
        for p, q in zip(a, b, strict=True):
            sa, sb = opt_a.state[p], opt_b.state[q]
            assert sb["exp_avg"].dtype == sb["exp_avg_sq"].dtype == torch.bfloat16 and q.dtype == p.dtype
            assert ("master" in sb) == master
            torch.testing.assert_close(opt_b.master_weights()[q], opt_a.master_weights()[p], rtol=1e-5, atol=1e-7)
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(sb[key].float(), sa[key].float(), rtol=2**-7, atol=1e-30)
                sb[key].copy_(sa[key])


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_forward_kl_kernel_equals_chunk_loss(kernels, temperature: float) -> None:
    from engine.distill.losses import LossSpec, chunk_loss

    _, kl_triton = kernels
    gen = torch.Generator().manual_seed(3)
    n, vocab = 7, 2500  # vocab not a multiple of the block; one row ignored
    s = (torch.randn(n, vocab, generator=gen) * 3).bfloat16()
    t = (torch.randn(n, vocab, generator=gen) * 3 + s.float()).bfloat16()
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[2] = -100
    scale = torch.tensor(1.0 / 6)
    spec = LossSpec("forward_kl", temperature=temperature, kd_weight=0.7)
    assert kl_triton.applies(s, t, spec, need_grad=True)
    kd, ce, grad = kl_triton.forward_kl_chunk(s, t, labels, scale, spec, True, torch.float32)
    ref_kd, ref_ce, ref_grad = chunk_loss(s.double(), t.double(), labels, scale.double(), spec, True)
    assert float(ce) == 0.0 == float(ref_ce)
    assert float(kd) == pytest.approx(float(ref_kd), rel=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-7)
    assert torch.all(grad[2] == 0)


def test_forward_kl_kernel_only_takes_the_plain_case(kernels) -> None:
    from engine.distill.losses import LossSpec

    _, kl_triton = kernels
    s = torch.zeros(4, 100, dtype=torch.bfloat16)
    t = torch.zeros(4, 100, dtype=torch.bfloat16)
    assert kl_triton.applies(s, t, LossSpec("forward_kl"), True)
    assert kl_triton.applies(s, t, LossSpec("forward_kl", vocab=100), True)
    for spec in (LossSpec("reverse_kl"), LossSpec("jsd"), LossSpec("ce"), LossSpec("forward_kl", top_k=5),
                 LossSpec("forward_kl", ce_weight=0.1), LossSpec("forward_kl", vocab=90)):
        assert not kl_triton.applies(s, t, spec, True), spec
    assert not kl_triton.applies(s, t, LossSpec("forward_kl"), False)  # no-grad (eval) path
    assert not kl_triton.applies(s, torch.zeros(4, 120, dtype=torch.bfloat16), LossSpec("forward_kl"), True)
    assert not kl_triton.applies(s.float(), t.float(), LossSpec("forward_kl"), True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_ce_kernel_equals_chunk_loss(dtype: torch.dtype) -> None:
    """Evaluation's no-gradient cross-entropy kernel: the same sum as chunk_loss, ignored rows out."""
    from engine.distill import ce_triton
    from engine.distill.losses import LossSpec, chunk_loss

    gen = torch.Generator().manual_seed(4)
    n, vocab = 9, 2500  # vocab not a multiple of the block
    s = (torch.randn(n, vocab, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[[0, 5]] = -100
    labels[3] = vocab - 1  # the last column, in the masked tail block
    spec = LossSpec("ce")
    assert ce_triton.applies(dtype, spec, need_grad=False)
    kd, ce, grad = ce_triton.ce_chunk(s, labels, spec)
    _, ref_ce, _ = chunk_loss(s.double(), None, labels, torch.tensor(1.0, dtype=torch.float64), spec, False)
    assert grad is None and float(kd) == 0.0
    assert float(ce) == pytest.approx(float(ref_ce), rel=1e-5)
    assert float(ref_ce) > 0


def test_ce_kernel_only_takes_the_no_gradient_plain_loss() -> None:
    from engine.distill import ce_triton
    from engine.distill.losses import LossSpec

    assert ce_triton.applies(torch.bfloat16, LossSpec("ce"), False)
    assert not ce_triton.applies(torch.bfloat16, LossSpec("ce"), True)  # training: chunk_loss has the gradient
    assert not ce_triton.applies(torch.bfloat16, LossSpec("forward_kl"), False)
    assert not ce_triton.applies(torch.float64, LossSpec("ce"), False)  # tests' double precision stays exact


@pytest.mark.parametrize("one_kernel", [False, True])
@pytest.mark.parametrize("stochastic", [False, True])
def test_master_adamw_with_int8_moments_through_the_kernel_equals_its_reference(
        kernels, monkeypatch: pytest.MonkeyPatch, stochastic: bool, one_kernel: bool) -> None:
    """optimizer_states = "int8" on CUDA, both ways: the 8-bit moments dequantized into fp32 copies that the
    kernel updates, then quantized back; or (`one_kernel`, adamw8_triton.py) read, updated and stored as
    codes in one kernel. The same as the torch-ops update (its reference) to rounding, a skipped step
    included. 3 x 2048 + 512 values: a program's span ends inside the tensor."""
    pytest.importorskip("torchao")
    from engine.training import int8_moments
    from engine.training.master_adamw import MasterAdamW

    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(52, 128, generator=gen), torch.randn(96, generator=gen)]
    grads = [[torch.randn(p.shape, generator=gen).bfloat16() for p in start] for _ in range(4)]
    opts, params = [], []
    for fused in (False, True):
        monkeypatch.setenv(int8_moments.FUSED_ENV, "1" if one_kernel else "0")
        ps = [torch.nn.Parameter(p.clone()) for p in start]
        opts.append(MasterAdamW([{"params": ps}], lr=1e-2, betas=(0.9, 0.95), fused=fused, state_dtype=torch.int8,
                                stochastic=stochastic))
        params.append(ps)
    assert (opts[1]._update8 is not None) == one_kernel
    for i, step in enumerate(grads):
        for opt, ps in zip(opts, params, strict=True):
            for p, g in zip(ps, step, strict=True):
                p.grad = g.clone()
            opt.found_inf = torch.tensor(float(i == 2))  # the third step is skipped
            before = {k: v.clone() for k, v in opt.state[ps[0]].items()}
            opt.step()
            if i == 2:
                assert all(torch.equal(before[k], v) for k, v in opt.state[ps[0]].items())
    ref, got = (opt.state[ps[0]] for opt, ps in zip(opts, params, strict=True))
    assert ref["exp_avg_codes"].dtype == got["exp_avg_codes"].dtype == torch.uint8 and float(got["step"]) == 3
    for key in ("exp_avg", "exp_avg_sq"):  # a level apart at most where fp32 sums round differently
        assert (got[f"{key}_codes"].int() - ref[f"{key}_codes"].int()).abs().max() <= 1, key
        torch.testing.assert_close(got[f"{key}_scale"], ref[f"{key}_scale"], rtol=1e-5, atol=0)
    masters = [opt.master_weights()[ps[0]].float() for opt, ps in zip(opts, params, strict=True)]
    # 3 steps of lr 1e-2 (~0.01 each); the interpreter truncates where the GPU rounds, and stochastic
    # rounding draws other bits (Philox, not torch's CPU generator): a bf16 ulp apart a step at most, at
    # the largest magnitude a weight had (its start or its end, plus the steps)
    ulp = 2**-7 * (torch.maximum(masters[0].abs(), start[0].abs()) + 0.03)
    assert ((masters[1] - masters[0]).abs() <= 3 * ulp).all()
    assert not torch.equal(masters[0], start[0])  # the weights moved
