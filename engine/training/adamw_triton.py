"""The MasterAdamW update as one Triton kernel per tensor (CUDA; imported only there and in tests).

Reads the gradient (bf16, or the fp32 sums of accumulated micro-batches), the fp32 master weight
and moments once, writes them back and the bf16 parameter: 28 bytes per element, the least an
update with fp32 state can move (20 with bf16 moments: they are loaded in their dtype, updated in
fp32 and stored rounded to nearest). The master may be the parameter itself (fp32 parameters). Measured against the same update through torch.compile
(benchmarks/RESULTS.md): the same kernel time alone, but ~2.5 ms less per step inside training
on an H200 (one launch per tensor instead of a dynamic-shape graph call per tensor).
The scalars (step, lr, clip scale, skip) are read on the device: no host sync.

With `sr_index` the bf16 parameter is stored rounded stochastically, with Philox bits seeded from (the
loaded step, sr_index): from its fp32 master (the default path), or with master_weights = "stochastic"
from itself, the parameter being its own master (20 bytes per element: no fp32 master to read and write).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 2048


@triton.jit
def _stochastic_round(w, step, index, offs):
    """fp32 -> bf16 rounded up in magnitude with probability equal to the dropped 16 bits' fraction
    (engine/training/master_adamw.py stochastic_round); non-finite values round to nearest."""
    seed = step.to(tl.int64) * 4294967296 + index  # Philox's key: step in the high word, the tensor's index low
    noise = tl.randint(seed, offs) & 0xFFFF
    bits = (w.to(tl.uint32, bitcast=True) + noise) & 0xFFFF0000
    rounded = bits.to(tl.float32, bitcast=True)
    finite = tl.abs(w) <= 3.4028234663852886e38  # (false for NaN and inf)
    return tl.where(finite, rounded, w).to(tl.bfloat16, fp_downcast_rounding="rtne")  # exact where finite


@triton.jit
def _adam(g, m, v, w, step, lr, beta1, beta2, eps, weight_decay):
    """One AdamW update in fp32 registers: the new moments and weight (adamw_reference's arithmetic)."""
    m = m + (1 - beta1) * (g - m)
    v = v * beta2 + (1 - beta2) * g * g
    bias1 = 1 - tl.exp2(step * tl.log2(beta1))
    bias2_sqrt = tl.sqrt(1 - tl.exp2(step * tl.log2(beta2)))
    w = w * (1 - lr * weight_decay) - (lr / bias1) * m / (tl.sqrt(v) / bias2_sqrt + eps)
    return m, v, w


@triton.jit
def _store_weight(p_ptr, w_ptr, w, offs, mask, step, sr_index, SR: tl.constexpr, OWN_MASTER: tl.constexpr):
    """The fp32 master (unless the parameter is its own master) and the parameter, rounded to nearest or
    (SR) stochastically."""
    if not OWN_MASTER:  # (else w_ptr is p_ptr: the store below is the only one)
        tl.store(w_ptr + offs, w, mask=mask)
    if SR:
        tl.store(p_ptr + offs, _stochastic_round(w, step, sr_index, offs), mask=mask)
    else:
        tl.store(p_ptr + offs, w.to(p_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)


@triton.jit
def _adamw_kernel(p_ptr, g_ptr, w_ptr, m_ptr, v_ptr, step_ptr, lr_ptr, inv_scale_ptr, skip_ptr, n,
                  beta1, beta2, eps, weight_decay, sr_index, BLOCK: tl.constexpr, SR: tl.constexpr,
                  OWN_MASTER: tl.constexpr):
    if tl.load(skip_ptr).to(tl.int32) == 0:  # found_inf: leave everything as it was
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        step = tl.load(step_ptr)
        lr = tl.load(lr_ptr)
        g = tl.load(g_ptr + offs, mask=mask).to(tl.float32) * tl.load(inv_scale_ptr)
        m = tl.load(m_ptr + offs, mask=mask).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=mask).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=mask).to(tl.float32)
        m, v, w = _adam(g, m, v, w, step, lr, beta1, beta2, eps, weight_decay)
        tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)  # (downcasts round to nearest)
        tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
        _store_weight(p_ptr, w_ptr, w, offs, mask, step, sr_index, SR, OWN_MASTER)


@triton.jit
def _round_kernel(p_ptr, w_ptr, step_ptr, n, sr_index, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    w = tl.load(w_ptr + offs, mask=mask)
    tl.store(p_ptr + offs, _stochastic_round(w, tl.load(step_ptr), sr_index, offs), mask=mask)


def adamw_update(param: torch.Tensor, grad: torch.Tensor, master: torch.Tensor, exp_avg: torch.Tensor,
                 exp_avg_sq: torch.Tensor, step: torch.Tensor, lr: torch.Tensor, inv_scale: torch.Tensor,
                 skip: torch.Tensor, beta1: float, beta2: float, eps: float, weight_decay: float,
                 sr_index: int | None = None) -> None:
    """Same arguments as engine.training.master_adamw.adamw_reference (flat contiguous tensors); with
    `sr_index`, `param` is bf16 (its master fp32, or the parameter itself)."""
    n = param.numel()
    sr = sr_index is not None
    if sr and param.dtype != torch.bfloat16:
        raise ValueError("stochastic rounding stores a bf16 parameter")
    _adamw_kernel[(triton.cdiv(n, BLOCK),)](param, grad, master, exp_avg, exp_avg_sq, step, lr, inv_scale, skip,
                                            n, beta1, beta2, eps, weight_decay, sr_index if sr else 0,
                                            BLOCK=BLOCK, SR=sr, OWN_MASTER=master.data_ptr() == param.data_ptr(),
                                            num_warps=8)


def round_into(param: torch.Tensor, master: torch.Tensor, step: torch.Tensor, sr_index: int) -> None:
    """`param` (bf16) = `master` (fp32) rounded with the bits the update at `step` used: a resumed run's
    parameters as the uninterrupted run's (master_adamw.round_into_reference in one kernel; flat contiguous tensors)."""
    n = param.numel()
    _round_kernel[(triton.cdiv(n, BLOCK),)](param, master, step, n, sr_index, BLOCK=BLOCK, num_warps=8)
