"""KD losses computed in chunks of tokens, fused with the output projection.

The student's and the teacher's logits are never materialised for the whole batch: for
each chunk of `chunk_tokens` positions we compute both models' logits from their final
hidden states, the loss and its gradient with respect to the student's logits, and fold
that gradient straight into the gradients of the hidden states and of the student's
output weight. Memory stays O(chunk x vocab) instead of O(batch x seq x vocab) for each
model. The gradients are computed in closed form during the forward pass (as in fused
linear cross-entropy kernels); backward only scales them by the incoming gradient.

Loss kinds, with p = teacher and q = student distributions at temperature T (both
restricted to the teacher's top-k tokens and renormalised there when `top_k` is set; with
[distill] teacher_logits = "cached" those top-k logits come from disk, engine/distill/teacher_topk.py):

    forward_kl  T^2 * sum p (log p - log q)                    (mean over tokens)
    reverse_kl  T^2 * sum q (log q - log p)
    jsd         T^2 * (KL(p || m) + KL(q || m)) / 2,  m = (p + q) / 2
    ce          plain next-token cross-entropy of the student (no teacher)

`ce_weight` adds the plain next-token loss to the KD loss: loss = kd_weight * KD + ce_weight * CE.
Only the first `vocab` columns (the shared real vocabulary) take part in the KD terms, so
models whose embeddings are padded to different sizes are compared on real tokens only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from engine.distill.loss_spec import LossSpec  # re-exported: callers build specs from here


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for half inputs, fp64 stays fp64 (tests compare in double precision)."""
    return torch.promote_types(t.dtype, torch.float32)


def chunk_loss(s_logits: torch.Tensor, t_logits: torch.Tensor | None, labels: torch.Tensor,
               scale: torch.Tensor, spec: LossSpec, need_grad: bool, grad_dtype: torch.dtype | None = None,
               t_top: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Loss sums of one chunk and d(total loss)/d(student logits).

    s_logits [n, Vs], t_logits [n, Vt] (or None), labels [n]; or, instead of t_logits, `t_top`: the
    teacher's top-k logits and their token ids [n, k] (stored, engine/distill/teacher_topk.py), which
    give what `top_k` takes from t_logits. Returns (kd_sum, ce_sum, grad)
    where the sums run over the chunk's valid tokens and `grad` is the gradient of
    (kd_weight * kd_sum + ce_coef * ce_sum) * scale, computed in fp32 (fp64 for fp64 input)
    and returned in `grad_dtype` (default: the logits' dtype).
    """
    acc = _acc_dtype(s_logits)
    s = s_logits.to(acc)
    valid = (labels != spec.ignore_index).to(acc)
    grad = None
    kd_sum = s.new_zeros(())
    ce_sum = s.new_zeros(())
    if spec.uses_teacher:
        assert t_logits is not None or t_top is not None
        T = spec.temperature
        V = spec.vocab or (s.shape[-1] if t_logits is None else min(s.shape[-1], t_logits.shape[-1]))
        zs = s[:, :V] / T
        idx = None
        if t_top is not None:  # the teacher's top-k, stored
            zt, idx = t_top[0].to(acc) / T, t_top[1]
        else:
            zt = t_logits[:, :V].to(acc) / T
            if spec.top_k is not None and spec.top_k < V:
                idx = zt.topk(spec.top_k, dim=-1).indices
                zt = zt.gather(-1, idx)
        if idx is not None:
            zs = zs.gather(-1, idx)
        log_q = F.log_softmax(zs, dim=-1)
        log_p = F.log_softmax(zt, dim=-1)
        q = log_q.exp()
        if spec.kind == "forward_kl":
            p = log_p.exp()
            per = (p * (log_p - log_q)).sum(-1)
            g = q - p if need_grad else None
        elif spec.kind == "reverse_kl":
            r = log_q - log_p
            per = (q * r).sum(-1)
            g = q * (r - per.unsqueeze(-1)) if need_grad else None
        else:  # jsd; log m through logaddexp so that p = q = 0 gives no NaN
            p = log_p.exp()
            log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
            per = 0.5 * ((p * (log_p - log_m)).sum(-1) + (q * (log_q - log_m)).sum(-1))
            if need_grad:
                h = 0.5 * (log_q - log_m)
                g = q * (h - (q * h).sum(-1, keepdim=True))
            else:
                g = None
        # d/ds = (1/T) d/dzs, and the loss carries T^2: net factor T on the gradient.
        kd_sum = (per * valid).sum() * (T * T)
        if need_grad:
            gk = g * (valid * (spec.kd_weight * T) * scale).unsqueeze(-1)
            if idx is not None:
                grad = torch.zeros_like(s).scatter_(-1, idx, gk)
            elif V == s.shape[-1]:
                grad = gk
            else:  # padded rows beyond the shared vocabulary get no KD gradient
                grad = torch.zeros_like(s)
                grad[:, :V] = gk
    if spec.ce_coef:
        tgt = labels.clamp(min=0).unsqueeze(-1)
        lse = torch.logsumexp(s, dim=-1)
        ce = lse - s.gather(-1, tgt).squeeze(-1)
        ce_sum = (ce * valid).sum()
        if need_grad:
            gc = torch.softmax(s, dim=-1)
            gc.scatter_add_(-1, tgt, -torch.ones_like(tgt, dtype=acc))
            gc = gc * (valid * (spec.ce_coef * scale)).unsqueeze(-1)
            grad = gc if grad is None else grad + gc
    if grad is not None:
        grad = grad.to(grad_dtype or s_logits.dtype)
    return kd_sum, ce_sum, grad


ChunkFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
_compiled: dict[str, ChunkFn] = {}


def get_chunk_fn(compile: bool = False) -> ChunkFn:
    """The chunk kernel; with compile, torch.compile fuses its element-wise passes, and on CUDA the
    default forward-KL case runs as one Triton kernel (engine/distill/kl_triton.py)."""
    if not compile:
        return chunk_loss
    if "c" not in _compiled:
        _compiled["c"] = _compiled_chunk_fn()
    return _compiled["c"]


def _compiled_chunk_fn() -> ChunkFn:
    compiled = torch.compile(chunk_loss, dynamic=False)
    if not torch.cuda.is_available():
        return compiled
    try:
        from engine.distill import kl_triton
    except ImportError:  # no Triton (CUDA builds of torch bring it): the compiled kernel does it all
        return compiled

    def chunk(s_logits, t_logits, labels, scale, spec, need_grad, grad_dtype=None, t_top=None):
        if t_top is None and s_logits.is_cuda and kl_triton.applies(s_logits, t_logits, spec, need_grad):
            return kl_triton.forward_kl_chunk(s_logits, t_logits, labels, scale, spec, need_grad, grad_dtype)
        return compiled(s_logits, t_logits, labels, scale, spec, need_grad, grad_dtype, t_top)

    return chunk


def _ce_kernel_applies(dtype: torch.dtype, spec: LossSpec, need_grad: bool) -> bool:
    try:
        from engine.distill import ce_triton
    except ImportError:  # no Triton (CUDA builds of torch bring it): chunk_loss does it
        return False
    return ce_triton.applies(dtype, spec, need_grad)


def _ce_triton_chunk(s_logits, t_logits, labels, scale, spec, need_grad, grad_dtype=None, t_top=None):
    from engine.distill import ce_triton

    return ce_triton.ce_chunk(s_logits, labels, spec)


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return h.dtype


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


# Without torch.compile the chunk kernel keeps ~8 fp32 [chunk, vocab] temporaries alive (42.8 GiB
# peak vs 26.7 GiB at 1024 tokens in the 1.2B -> 0.75B benchmark, at the same speed): cap the chunk.
EAGER_MAX_CHUNK = 1024


def _forward_chunks(h_s, w_s, h_t, w_t, labels, spec: LossSpec, fn: ChunkFn, need_h: bool, need_w: bool,
                    t_top: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Shared by the autograd path and the no-grad path: loss parts (+ grads)."""
    cdt = _compute_dtype(h_s)
    if h_s.is_cuda and _ce_kernel_applies(cdt, spec, need_h or need_w):
        fn = _ce_triton_chunk  # evaluation's plain loss: one read of each row, no fp32 copies
    chunk = spec.chunk_tokens if fn is not chunk_loss else min(spec.chunk_tokens, EAGER_MAX_CHUNK)
    n_valid = (labels != spec.ignore_index).sum().clamp(min=1)
    scale = 1.0 / n_valid.to(_acc_dtype(h_s))
    need_grad = need_h or need_w
    with torch.autocast(h_s.device.type, enabled=False):
        ws = w_s.to(cdt)
        wt = w_t.to(cdt) if (spec.uses_teacher and w_t is not None) else None
        grad_h = torch.empty_like(h_s) if need_h else None
        grad_w = torch.empty(w_s.shape, dtype=_acc_dtype(w_s), device=w_s.device) if need_w else None
        kd_tot = scale.new_zeros(())
        ce_tot = scale.new_zeros(())
        for a, b in _chunks(h_s.shape[0], chunk):
            hs = h_s[a:b].to(cdt)
            s = hs @ ws.t()
            t = h_t[a:b].to(cdt) @ wt.t() if wt is not None else None
            top = (t_top[0][a:b], t_top[1][a:b]) if t_top is not None else None
            kd, ce, g = fn(s, t, labels[a:b], scale, spec, need_grad, cdt, top)
            kd_tot = kd_tot + kd.to(kd_tot.dtype)
            ce_tot = ce_tot + ce.to(ce_tot.dtype)
            if need_grad:
                if need_h:
                    grad_h[a:b] = g @ ws
                if need_w:
                    _add_wgrad(grad_w, g, hs, first=a == 0)
    kd_mean = kd_tot * scale
    ce_mean = ce_tot * scale
    loss = spec.kd_weight * kd_mean + spec.ce_coef * ce_mean if spec.uses_teacher else spec.ce_coef * ce_mean
    return loss, kd_mean, ce_mean, grad_h, grad_w


def teacher_logit_chunks(h_t: torch.Tensor, w_t: torch.Tensor, chunk_tokens: int) -> Iterator[torch.Tensor]:
    """The teacher's logits over flattened positions h_t [N, H], `chunk_tokens` rows at a time, computed as
    the fused loss computes them (what engine/distill/teacher_topk.py stores)."""
    cdt = _compute_dtype(h_t)
    with torch.autocast(h_t.device.type, enabled=False):
        wt = w_t.to(cdt)
        for a, b in _chunks(h_t.shape[0], chunk_tokens):
            yield h_t[a:b].to(cdt) @ wt.t()


_MIXED_ADDMM: dict[str, bool] = {}


def _add_wgrad(grad_w: torch.Tensor, g: torch.Tensor, hs: torch.Tensor, first: bool) -> None:
    """grad_w (fp32) += g^T @ hs, or = for the first chunk (grad_w starts uninitialised: no zero
    fill). On CUDA with half inputs, cuBLAS accumulates straight into the fp32 buffer (mm/addmm
    with out_dtype) instead of writing a half [V, H] product and adding it."""
    if grad_w.dtype != g.dtype and g.is_cuda and _MIXED_ADDMM.get("ok", True):
        try:
            if first:
                torch.mm(g.t(), hs, out_dtype=grad_w.dtype, out=grad_w)
            else:
                torch.addmm(grad_w, g.t(), hs, out_dtype=grad_w.dtype, out=grad_w)
            _MIXED_ADDMM["ok"] = True
            return
        except (RuntimeError, TypeError, NotImplementedError):
            _MIXED_ADDMM["ok"] = False
    if first:
        grad_w.copy_(g.t() @ hs)
    else:
        grad_w += g.t() @ hs


def _scale_cast_eager(grad: torch.Tensor, factor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.mul(grad, factor, out=torch.empty(grad.shape, dtype=dtype, device=grad.device))


def _scale_cast(compiled: bool) -> Callable[[torch.Tensor, torch.Tensor, torch.dtype], torch.Tensor]:
    """grad * factor in `dtype`. Eager, a mixed-dtype mul runs PyTorch's generic (not vectorised)
    element-wise kernel: 1.1 ms for the 1 GB fp32 LM-head gradient on an H200; compiled, one
    vectorised pass."""
    if not compiled:
        return _scale_cast_eager
    if "scale_cast" not in _compiled:
        _compiled["scale_cast"] = torch.compile(lambda g, f, dtype: (g * f).to(dtype), dynamic=False)
    return _compiled["scale_cast"]


class _FusedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, labels, spec, fn, t_top):  # noqa: D401
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, kd, ce, grad_h, grad_w = _forward_chunks(h_s, w_s, h_t, w_t, labels, spec, fn, need_h, need_w, t_top)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.w_dtype = w_s.dtype
        ctx.compiled = fn is not chunk_loss
        ctx.mark_non_differentiable(kd, ce)
        return loss, kd, ce

    @staticmethod
    def backward(ctx, grad_loss, _gkd, _gce):
        grad_h, grad_w = ctx.saved_tensors
        gh = (grad_h * grad_loss.to(grad_h.dtype)) if grad_h is not None else None
        gw = None
        if grad_w is not None:  # scaled and cast to the weight's dtype in one pass
            gw = _scale_cast(ctx.compiled)(grad_w, grad_loss.to(grad_w.dtype), ctx.w_dtype)
        return gh, gw, None, None, None, None, None, None


def fused_linear_loss(h_s: torch.Tensor, w_s: torch.Tensor, labels: torch.Tensor, spec: LossSpec,
                      h_t: torch.Tensor | None = None, w_t: torch.Tensor | None = None,
                      compile: bool = False, t_top: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, kd part, ce part) for flattened final hidden states h_s [N, Hs] and labels [N].

    w_s [Vs, Hs] is the student's output weight; h_t [N, Ht] and w_t [Vt, Ht] the
    teacher's (no gradient flows to them), or `t_top` its stored top-k logits and ids [N, k].
    The loss is a mean over valid tokens.
    """
    if t_top is not None:
        if spec.top_k is None or t_top[0].shape[-1] != spec.top_k:
            raise ValueError(f"stored teacher top-k of width {t_top[0].shape[-1]} for a loss with top_k = {spec.top_k}")
        h_t = w_t = None
    elif spec.uses_teacher and (h_t is None or w_t is None):
        raise ValueError(f"loss '{spec.kind}' needs the teacher's hidden states and output weight")
    fn = get_chunk_fn(compile)
    h_t = h_t.detach() if h_t is not None else None
    w_t = w_t.detach() if w_t is not None else None
    if torch.is_grad_enabled() and (h_s.requires_grad or w_s.requires_grad):
        return _FusedLinearLoss.apply(h_s, w_s, h_t, w_t, labels, spec, fn, t_top)
    loss, kd, ce, _, _ = _forward_chunks(h_s, w_s, h_t, w_t, labels, spec, fn, False, False, t_top)
    return loss, kd, ce


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Distance between (projected) student and teacher hidden states, mean over tokens."""
    s = student.float()
    t = teacher.detach().float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-6)).mean()
    if kind == "mse":
        return F.mse_loss(s, t)
    raise ValueError(f"hidden_loss '{kind}' is not one of cosine, mse")
