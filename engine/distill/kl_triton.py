"""Forward KL (teacher || student) of one chunk of logits, loss and gradient, as one Triton kernel.

The default KD case (`forward_kl`, all of the vocabulary, no top-k, no CE term) on CUDA with
`compile`: one program per token row reads both rows once for the online softmax statistics of
both models and the KL sum, then again (mostly from L2) to write d(loss)/d(student logits).
torch.compile's kernel for the same expression makes five passes over the row: 2.11 -> 1.48 ms
per 4096 x 128256 chunk on an H200 (benchmarks/RESULTS.md). Other cases use the compiled
`chunk_loss`; both give the same values (tests run this kernel in Triton's CPU interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.distill.loss_spec import LossSpec

BLOCK = 1024
_LOW = -1.0e30  # stands in for -inf in masked lanes (inf - inf would be NaN)


@triton.jit
def _forward_kl_kernel(s_ptr, t_ptr, g_ptr, stride, V, inv_t, per_ptr, coef_ptr, LOW: tl.constexpr,
                       BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * stride
    t_row = t_ptr + row * stride
    # per-lane online softmax statistics of both rows, merged after the loop
    m_s = tl.full([BLOCK], LOW, tl.float32)
    d_s = tl.zeros([BLOCK], tl.float32)
    m_t = tl.full([BLOCK], LOW, tl.float32)
    d_t = tl.zeros([BLOCK], tl.float32)
    a = tl.zeros([BLOCK], tl.float32)  # sum exp(t - m_t) * (t - s): the teacher-weighted log-ratio
    for off in range(0, V, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < V
        s = tl.where(mask, tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t, LOW)
        t = tl.where(mask, tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t, LOW)
        ms_new = tl.maximum(m_s, s)
        d_s = d_s * tl.exp(m_s - ms_new) + tl.where(mask, tl.exp(s - ms_new), 0.0)
        m_s = ms_new
        mt_new = tl.maximum(m_t, t)
        c = tl.exp(m_t - mt_new)
        e = tl.where(mask, tl.exp(t - mt_new), 0.0)
        d_t = d_t * c + e
        a = a * c + e * (t - s)
        m_t = mt_new
    ms_all = tl.max(m_s, 0)
    lse_s = ms_all + tl.log(tl.sum(d_s * tl.exp(m_s - ms_all), 0))
    mt_all = tl.max(m_t, 0)
    w_t = tl.exp(m_t - mt_all)
    z_t = tl.sum(d_t * w_t, 0)
    lse_t = mt_all + tl.log(z_t)
    # KL(p || q) = sum p (t - s) - lse_t + lse_s
    tl.store(per_ptr + row, tl.sum(a * w_t, 0) / z_t - lse_t + lse_s)
    coef = tl.load(coef_ptr + row)
    for off in range(0, V, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < V
        s = tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t
        t = tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t
        g = (tl.exp(s - lse_s) - tl.exp(t - lse_t)) * coef
        tl.store(g_ptr + row * stride + cols, g.to(g_ptr.dtype.element_ty), mask=mask)


def applies(s_logits: torch.Tensor, t_logits: torch.Tensor | None, spec: LossSpec, need_grad: bool) -> bool:
    """Whether `forward_kl_chunk` computes this chunk (else `chunk_loss` does)."""
    return (spec.kind == "forward_kl" and spec.uses_teacher and spec.top_k is None and not spec.ce_coef
            and need_grad and t_logits is not None and s_logits.shape == t_logits.shape
            and spec.vocab in (None, s_logits.shape[-1]) and s_logits.stride(-1) == 1 and t_logits.stride(-1) == 1
            and s_logits.stride(0) == t_logits.stride(0) and s_logits.dtype in (torch.bfloat16, torch.float16))


def forward_kl_chunk(s_logits: torch.Tensor, t_logits: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor,
                     spec: LossSpec, need_grad: bool, grad_dtype: torch.dtype | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`chunk_loss`'s contract for the cases `applies` accepts: (kd_sum, ce_sum = 0, grad)."""
    n, vocab = s_logits.shape
    T = spec.temperature
    valid = (labels != spec.ignore_index).float()
    coef = (valid * (spec.kd_weight * T) * scale.float()).contiguous()  # d/ds carries a net factor T
    per = torch.empty(n, dtype=torch.float32, device=s_logits.device)
    grad = torch.empty(s_logits.shape, dtype=grad_dtype or s_logits.dtype, device=s_logits.device)
    _forward_kl_kernel[(n,)](s_logits, t_logits, grad, s_logits.stride(0), vocab, 1.0 / T, per, coef,
                             LOW=_LOW, BLOCK=BLOCK, num_warps=4)
    kd_sum = (per * valid).sum() * (T * T)
    return kd_sum, kd_sum.new_zeros(()), grad
