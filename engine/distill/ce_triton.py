"""Next-token cross-entropy of one chunk of logits, no gradient, as one Triton kernel.

Evaluation (validation, "loss after pruning", search scoring, the eval stage) needs only the loss:
one program per token row reads the row once for its online log-sum-exp and the target's logit.
The eager `chunk_loss` casts the chunk to fp32 and runs logsumexp, which materialises the fp32
row three more times (max, shift, exp): on a 1B model over a 128k vocabulary that extra traffic
made scoring a search candidate ~1.3x a plain forward on an H200 (benchmarks/RESULTS.md). Tests
run this kernel in Triton's CPU interpreter against `chunk_loss`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.distill.loss_spec import LossSpec

BLOCK = 1024
_LOW = -1.0e30  # stands in for -inf in masked lanes (inf - inf would be NaN)


@triton.jit
def _ce_kernel(s_ptr, stride, V, labels_ptr, out_ptr, IGNORE: tl.constexpr, LOW: tl.constexpr,
               BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * stride
    m = tl.full([BLOCK], LOW, tl.float32)  # per-lane online softmax statistics, merged after the loop
    d = tl.zeros([BLOCK], tl.float32)
    for off in range(0, V, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < V
        s = tl.where(mask, tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32), LOW)
        m_new = tl.maximum(m, s)
        d = d * tl.exp(m - m_new) + tl.where(mask, tl.exp(s - m_new), 0.0)
        m = m_new
    m_all = tl.max(m, 0)
    lse = m_all + tl.log(tl.sum(d * tl.exp(m - m_all), 0))
    label = tl.load(labels_ptr + row)
    valid = label != IGNORE
    target = tl.load(s_row + tl.where(valid, label, 0)).to(tl.float32)
    tl.store(out_ptr + row, tl.where(valid, lse - target, 0.0))


def applies(logits_dtype: torch.dtype, spec: LossSpec, need_grad: bool) -> bool:
    """Whether `ce_chunk` computes chunks of logits in this dtype (else `chunk_loss` does)."""
    return spec.kind == "ce" and not need_grad and logits_dtype in (torch.bfloat16, torch.float16, torch.float32)


def ce_chunk(s_logits: torch.Tensor, labels: torch.Tensor, spec: LossSpec
             ) -> tuple[torch.Tensor, torch.Tensor, None]:
    """`chunk_loss`'s contract for the cases `applies` accepts: (kd_sum = 0, ce_sum, no gradient)."""
    n, vocab = s_logits.shape
    assert s_logits.stride(-1) == 1, "rows must be contiguous"
    per = torch.empty(n, dtype=torch.float32, device=s_logits.device)
    _ce_kernel[(n,)](s_logits, s_logits.stride(0), vocab, labels.contiguous(), per, IGNORE=spec.ignore_index,
                     LOW=_LOW, BLOCK=BLOCK, num_warps=4)
    ce_sum = per.sum()
    return ce_sum.new_zeros(()), ce_sum, None
