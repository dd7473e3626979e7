"""Adam moments in 8 bits (optimizer_states = "int8"): torchao's block-wise quantization (the dynamic
map of 8-bit Adam, Dettmers et al. 2021: 256 values share an fp32 scale, each is a code into a table of
256 levels, signed for the first moment and unsigned for the second). 2.03 bytes per parameter for
both moments, against 4 in bf16 and 8 in fp32.

MasterAdamW keeps each moment as two plain tensors, `<name>_codes` (uint8) and `<name>_scale` (fp32),
so that a checkpoint holds no tensor subclass; its step dequantizes a tensor's moments to fp32, runs
the same update (the Triton kernel on CUDA), and quantizes them back; a skipped step (`keep`) keeps
the stored codes and scales (requantizing would move a signed block whose largest value is negative:
the signed map's lowest level is -0.993, not -1).

torchao is imported here only, fenced: the four functions of torchao.optim.quant_utils used below (read
in 0.14, run with 0.18; engine/config/extras.py TORCHAO is the version check the schema makes as the file is
read, `require` the import check when the optimizer is built).

Measured on an H200 (benchmarks/RESULTS.md "The seed workload on one H200"): the same loss as bf16 moments,
but the extra passes cost 20% of the step at 1.24B and 5-8% at 8B: for stages that fit no other way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from engine.config.extras import TORCHAO
from engine.config.schema import INT8_BLOCK as BLOCK  # values sharing one scale (and the bytes it costs)
from engine.errors import UserError

MIN_NUMEL = 4096  # smaller tensors (norms) keep bf16 moments, as in torchao and bitsandbytes
# "1": the update in one Triton kernel that reads and writes the codes (engine/training/adamw8_triton.py), in
# place of the two-pass path here; off until a GPU has measured it (benchmarks/scale_gpu.sh int8)
FUSED_ENV = "SLIMLAB_INT8_FUSED"
MOMENTS = ("exp_avg", "exp_avg_sq")
SIGNED = {"exp_avg": True, "exp_avg_sq": False}  # the second moment is never negative: all 256 codes >= 0


def quantized(numel: int) -> bool:
    """Whether a tensor of `numel` values gets 8-bit moments (else bf16 ones)."""
    return numel >= MIN_NUMEL and numel % BLOCK == 0


@functools.cache
def _quant_utils() -> Any:
    """torchao.optim.quant_utils, imported once (quietly: engine/config/extras.py)."""
    quant_utils = TORCHAO.load("torchao.optim.quant_utils", 'optimizer_states = "int8"')
    missing = [f for f in ("create_dynamic_map", "scale_tensor", "quantize_8bit_with_qmap", "dequant_with_qmap")
               if not hasattr(quant_utils, f)]
    if missing:  # the fence: a torchao that moved the functions this module calls
        raise UserError(f"optimizer_states = \"int8\": this torchao has no {', '.join(missing)} in "
                        f'torchao.optim.quant_utils (slimlab was checked with 0.14 to 0.18); install one of those, or set '
                        f'optimizer_states = "bfloat16"')
    return quant_utils


def require() -> None:
    """Import torchao now (a UserError naming the fix if it cannot be used), not at the first step."""
    _quant_utils()


@functools.cache
def _qmap(signed: bool, device: torch.device) -> torch.Tensor:
    return torch.tensor(_quant_utils().create_dynamic_map(signed=signed), dtype=torch.float32, device=device)


def qmaps(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The signed and the unsigned level tables (the first and the second moment's) on `device`."""
    return _qmap(True, device), _qmap(False, device)


def zeros(numel: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and scales of `numel` zeros (a zero scale makes every code zero)."""
    return (torch.zeros(numel, dtype=torch.uint8, device=device),
            torch.zeros(numel // BLOCK, dtype=torch.float32, device=device))


@functools.cache
def _ops(cuda: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(quantize, dequantize) over torchao's functions. On CUDA each is compiled into one fused kernel for
    every size (eager, the binary search makes a few int64 temporaries the size of the tensor); on the CPU
    as they are (small models, tests)."""
    qu = _quant_utils()

    def quantize(x: torch.Tensor, qmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scaled, scale = qu.scale_tensor(x, BLOCK)
        return qu.quantize_8bit_with_qmap(scaled, qmap), scale

    def dequantize(codes: torch.Tensor, scale: torch.Tensor, qmap: torch.Tensor) -> torch.Tensor:
        return qu.dequant_with_qmap(codes, qmap, scale)

    if cuda:
        return torch.compile(quantize, dynamic=True), torch.compile(dequantize, dynamic=True)
    return quantize, dequantize


def dequantize(codes: torch.Tensor, scale: torch.Tensor, signed: bool) -> torch.Tensor:
    """The fp32 values (1-D) that `codes` and `scale` hold."""
    return _ops(codes.is_cuda)[1](codes, scale, _qmap(signed, codes.device))


@torch.no_grad()
def quantize_into(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, signed: bool,
                  keep: torch.Tensor | None = None) -> None:
    """Store fp32 `x` (1-D, numel a multiple of BLOCK) as codes and block scales, rounded to the nearest
    level; where `keep` (0-d bool, on the device: no host sync) is true, leave them as they are."""
    new_codes, new_scale = _ops(x.is_cuda)[0](x, _qmap(signed, x.device))
    if keep is not None:
        new_codes, new_scale = torch.where(keep, codes, new_codes), torch.where(keep, scale, new_scale)
    codes.copy_(new_codes)
    scale.copy_(new_scale)


def quantize(x: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and scales for fp32 `x` (1-D): a checkpoint's float moments loaded into 8 bits."""
    codes, scale = zeros(x.numel(), x.device)
    quantize_into(x.float(), codes, scale, signed)
    return codes, scale


def quantized_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether an optimizer state holds its moments in 8 bits."""
    return "exp_avg_codes" in state
