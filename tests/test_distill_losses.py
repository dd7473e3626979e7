"""The chunked, fused KD loss equals a naive full-tensor computation (value and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.distill.losses import LossSpec, fused_linear_loss, hidden_state_loss


def naive_loss(h_s, w_s, h_t, w_t, labels, spec: LossSpec) -> torch.Tensor:
    """Reference: full [N, V] logits for both models, autograd does the gradients."""
    s = h_s @ w_s.t()
    valid = labels != spec.ignore_index
    n = valid.sum().clamp(min=1)
    total = s.new_zeros(())
    if spec.kind != "ce" and spec.kd_weight > 0:
        t = (h_t @ w_t.t()).detach()
        V = spec.vocab or min(s.shape[-1], t.shape[-1])
        T = spec.temperature
        zs, zt = s[:, :V] / T, t[:, :V] / T
        if spec.top_k:
            idx = zt.topk(spec.top_k, dim=-1).indices
            zs, zt = zs.gather(-1, idx), zt.gather(-1, idx)
        ls, lt = F.log_softmax(zs, -1), F.log_softmax(zt, -1)
        if spec.kind == "forward_kl":
            per = F.kl_div(ls, lt, log_target=True, reduction="none").sum(-1)
        elif spec.kind == "reverse_kl":
            per = F.kl_div(lt, ls, log_target=True, reduction="none").sum(-1)
        else:
            m = 0.5 * (ls.exp() + lt.exp())
            per = 0.5 * (F.kl_div(m.log(), lt, log_target=True, reduction="none").sum(-1)
                         + F.kl_div(m.log(), ls, log_target=True, reduction="none").sum(-1))
        total = total + spec.kd_weight * (per * valid).sum() / n * T * T
    ce_w = 1.0 if spec.kind == "ce" else spec.ce_weight
    if ce_w:
        ce = F.cross_entropy(s, labels, ignore_index=spec.ignore_index, reduction="sum") / n
        total = total + ce_w * ce
    return total


CASES = [
    LossSpec("forward_kl", temperature=2.0),
    LossSpec("forward_kl", temperature=0.7, top_k=5, ce_weight=0.3),
    LossSpec("reverse_kl", temperature=1.5),
    LossSpec("reverse_kl", temperature=1.0, top_k=7),
    LossSpec("jsd", temperature=3.0, ce_weight=0.5, kd_weight=0.8),
    LossSpec("jsd", temperature=2.0, top_k=4),
    LossSpec("ce"),
]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: f"{s.kind}-T{s.temperature}-k{s.top_k}-ce{s.ce_weight}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_equals_naive(spec: LossSpec, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(hash((spec.kind, spec.top_k, str(dtype))) % 2**31)
    n, hs, ht, vs, vt, vocab = 37, 12, 16, 53, 60, 50  # padded vocabularies of different sizes
    spec = LossSpec(**{**spec.__dict__, "vocab": vocab, "chunk_tokens": 16})  # 3 chunks, last partial
    h_s = torch.randn(n, hs, generator=g, dtype=dtype, requires_grad=True)
    w_s = (torch.randn(vs, hs, generator=g, dtype=dtype) * 0.7).requires_grad_()
    h_t = torch.randn(n, ht, generator=g, dtype=dtype)
    w_t = torch.randn(vt, ht, generator=g, dtype=dtype) * 0.7
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[[3, 20]] = -100  # ignored positions

    loss, kd, ce = fused_linear_loss(h_s, w_s, labels, spec, h_t, w_t)
    ref = naive_loss(h_s, w_s, h_t, w_t, labels, spec)
    gh, gw = torch.autograd.grad(2.5 * loss, (h_s, w_s))  # an upstream factor reaches backward
    rh, rw = torch.autograd.grad(2.5 * ref, (h_s, w_s))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(loss.detach(), ref.detach(), **tol)
    torch.testing.assert_close(gh, rh, **tol)
    torch.testing.assert_close(gw, rw, **tol)
    assert float(loss.detach()) > 0
    parts = spec.kd_weight * kd + (1.0 if spec.kind == "ce" else spec.ce_weight) * ce
    if spec.kind == "ce":
        parts = ce
    torch.testing.assert_close(parts, loss.detach(), **tol)

    with torch.no_grad():  # the evaluation path (no gradients) gives the same value
        loss2, _, _ = fused_linear_loss(h_s, w_s, labels, spec, h_t, w_t)
    torch.testing.assert_close(loss2, ref.detach(), **tol)


def test_kd_is_zero_for_identical_models_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(20, 8, generator=g)
    w = torch.randn(30, 8, generator=g)
    labels = torch.randint(0, 30, (20,), generator=g)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        spec = LossSpec(kind, temperature=2.0, chunk_tokens=7)
        same, _, _ = fused_linear_loss(h, w, labels, spec, h, w)
        diff, _, _ = fused_linear_loss(h, w, labels, spec, h, w.flip(0))
        assert abs(float(same)) < 1e-6
        assert float(diff) > 1e-3


def test_hidden_state_losses() -> None:
    a = torch.randn(4, 5, 6)
    assert float(hidden_state_loss(a, a, "cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(hidden_state_loss(a, 3 * a, "cosine")) == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert float(hidden_state_loss(a, -a, "cosine")) == pytest.approx(2.0, abs=1e-5)
    assert float(hidden_state_loss(a, a + 1, "mse")) == pytest.approx(1.0, abs=1e-6)
