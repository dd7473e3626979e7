"""The MasterAdamW update with 8-bit moments as one Triton kernel per tensor (CUDA; imported only there
and in tests): optimizer_states = "int8" without the fp32 round trip.

engine/training/int8_moments.py's path dequantizes both moments into fp32 copies, runs the update kernel
of adamw_triton.py and quantizes them back: ~50 bytes an element and a dozen launches a tensor, which cost
20% of the step at 1.24B on an H200 (benchmarks/RESULTS.md). Here each program loads a span of codes and
their block scales, updates in registers and stores codes and scales again: ~10 bytes an element with
stochastic rounding, one launch. The quantization is torchao's, step for step (int8_moments.py): the
block's absolute maximum as its scale (at least 1e-12), then the nearest level of the sorted 256-level
map by binary search, rounding up from the midpoint.

Not yet the default: int8_moments.FUSED_ENV turns it on until a GPU has measured it
(benchmarks/scale_gpu.sh int8 runs both). The tests check it against the two-pass path in Triton's
CPU interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.training.adamw_triton import _adam, _store_weight

BLOCK = 2048  # elements a program updates: 8 quantization blocks


@triton.jit
def _dequant(codes_ptr, scale_ptr, qmap_ptr, offs, mask, QB: tl.constexpr):
    codes = tl.load(codes_ptr + offs, mask=mask, other=0).to(tl.int32)
    return tl.load(qmap_ptr + codes) * tl.load(scale_ptr + offs // QB, mask=mask, other=0.0)


@triton.jit
def _quant_store(x, codes_ptr, scale_ptr, qmap_ptr, pid, n, BLOCK: tl.constexpr, QB: tl.constexpr):
    """x (BLOCK fp32) -> codes (uint8) and one scale per QB values, stored where inside n."""
    x2 = tl.reshape(x, (BLOCK // QB, QB))
    scale = tl.maximum(tl.max(tl.abs(x2), axis=1), 1e-12)
    y = x2 / scale[:, None]
    c = tl.where(y >= tl.load(qmap_ptr + 128), 128, 0)
    c += tl.where(y >= tl.load(qmap_ptr + c + 64), 64, 0)
    c += tl.where(y >= tl.load(qmap_ptr + c + 32), 32, 0)
    c += tl.where(y >= tl.load(qmap_ptr + c + 16), 16, 0)
    c += tl.where(y >= tl.load(qmap_ptr + c + 8), 8, 0)
    c += tl.where(y >= tl.load(qmap_ptr + c + 4), 4, 0)
    c += tl.where(y >= tl.load(qmap_ptr + c + 2), 2, 0)
    c += tl.where(y >= tl.load(qmap_ptr + c + 1), 1, 0)
    up = tl.minimum(c + 1, 255)
    low, high = tl.load(qmap_ptr + c), tl.load(qmap_ptr + up)
    c = tl.where(y - low >= (high - low) * 0.5, up, c)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    tl.store(codes_ptr + offs, tl.reshape(c, (BLOCK,)).to(tl.uint8), mask=offs < n)
    blocks = pid * (BLOCK // QB) + tl.arange(0, BLOCK // QB)
    tl.store(scale_ptr + blocks, scale, mask=blocks * QB < n)


@triton.jit
def _adamw8_kernel(p_ptr, g_ptr, w_ptr, mc_ptr, ms_ptr, vc_ptr, vs_ptr, qs_ptr, qu_ptr, step_ptr, lr_ptr,
                   inv_scale_ptr, skip_ptr, n, beta1, beta2, eps, weight_decay, sr_index, BLOCK: tl.constexpr,
                   QB: tl.constexpr, SR: tl.constexpr, OWN_MASTER: tl.constexpr):
    if tl.load(skip_ptr).to(tl.int32) == 0:  # found_inf: leave everything as it was
        pid = tl.program_id(0).to(tl.int64)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        step = tl.load(step_ptr)
        lr = tl.load(lr_ptr)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(inv_scale_ptr)
        m = _dequant(mc_ptr, ms_ptr, qs_ptr, offs, mask, QB)
        v = _dequant(vc_ptr, vs_ptr, qu_ptr, offs, mask, QB)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m, v, w = _adam(g, m, v, w, step, lr, beta1, beta2, eps, weight_decay)
        _quant_store(m, mc_ptr, ms_ptr, qs_ptr, pid, n, BLOCK, QB)
        _quant_store(v, vc_ptr, vs_ptr, qu_ptr, pid, n, BLOCK, QB)
        _store_weight(p_ptr, w_ptr, w, offs, mask, step, sr_index, SR, OWN_MASTER)


def adamw8_update(param: torch.Tensor, grad: torch.Tensor, master: torch.Tensor, moments: dict[str, torch.Tensor],
                  qmaps: tuple[torch.Tensor, torch.Tensor], step: torch.Tensor, lr: torch.Tensor,
                  inv_scale: torch.Tensor, skip: torch.Tensor, beta1: float, beta2: float, eps: float,
                  weight_decay: float, sr_index: int | None = None, block: int = 256) -> None:
    """adamw_triton.adamw_update with the moments as `moments` ({exp_avg,exp_avg_sq}_{codes,scale}, flat)
    and `qmaps` (the signed and the unsigned level tables, fp32, on the device); numel a multiple of `block`."""
    n = param.numel()
    if n % block or BLOCK % block:
        raise ValueError(f"8-bit moments come in blocks of {block}: {n} values")
    sr = sr_index is not None
    _adamw8_kernel[(triton.cdiv(n, BLOCK),)](
        param, grad, master, moments["exp_avg_codes"], moments["exp_avg_scale"], moments["exp_avg_sq_codes"],
        moments["exp_avg_sq_scale"], qmaps[0], qmaps[1], step, lr, inv_scale, skip, n, beta1, beta2, eps,
        weight_decay, sr_index if sr else 0, BLOCK=BLOCK, QB=block, SR=sr,
        OWN_MASTER=master.data_ptr() == param.data_ptr(), num_warps=8)
