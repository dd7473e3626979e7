"""`float8 = true`: the decoder layers' matmuls in float8, through torchao's float8 training.

torchao (https://github.com/pytorch/ao, the optional `[float8]` extra) swaps each `nn.Linear` for its
`Float8Linear` with its public `convert_to_float8_training`: the input and the weight are cast to
float8 e4m3 with one dynamic scale per tensor (the "tensorwise" recipe, torchao's fastest), multiplied by
`torch._scaled_mm`, and the output comes back in the input's dtype; backward casts the output gradient to
e5m2. The weights stay bf16 (or fp32) parameters with their own names: the optimizer, the master weights
and the checkpoints see no difference, and a saved student loads with plain `from_pretrained`.

Every `nn.Linear` but the LM head is swapped, in student and teacher: in the architectures slimlab prunes
those are the decoder layers' projections. The LM head stays: the fused KD loss (engine/distill/losses.py)
reads its weight directly. A projection whose sides are not multiples of 16 (what `_scaled_mm` needs)
stays in bf16.

Float8 matmuls need an Ada or Hopper GPU (compute capability 8.9, e.g. L4, L40S, H100, H200). On the CPU
torch runs them too, slowly: for the tests. MFU stays counted against the card's bf16 peak, so a float8
run's MFU is "bf16-equivalent" (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.config.extras import TORCHAO_FLOAT8
from engine.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

MIN_CAPABILITY = (8, 9)  # the first CUDA architecture with float8 tensor cores (Ada)
ALIGN = 16  # torch._scaled_mm: both sides of the weight a multiple of this


def device_problem(device: torch.device) -> str | None:
    """Why float8 matmuls cannot run on this device (one line with the fix), else None."""
    import torch

    if device.type != "cuda":
        return None
    capability = torch.cuda.get_device_capability(device)
    if capability >= MIN_CAPABILITY:
        return None
    name = torch.cuda.get_device_name(device)
    return (f"{name} (compute capability {capability[0]}.{capability[1]}) has no float8 matmuls; "
            f"they need {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (L4, L40S, H100, H200); set float8 = false")


def use_float8(model: nn.Module, device: torch.device, what: str = "model") -> int:
    """Swap `model`'s projections but the LM head for torchao's Float8Linear; the number swapped.
    A UserError (one line, the fix) when torchao or the device cannot do it. Idempotent."""
    from torch import nn

    problem = TORCHAO_FLOAT8.install_problem() or device_problem(device)
    if problem:
        raise UserError(f"float8 = true ({what}): {problem}")
    head = model.get_output_embeddings()

    def eligible(module: nn.Module, fqn: str) -> bool:
        return (type(module) is nn.Linear and module is not head and module.in_features % ALIGN == 0
                and module.out_features % ALIGN == 0)

    before = float8_linears(model)
    _converter()(model, module_filter_fn=eligible)
    return float8_linears(model) - before


def float8_linears(model: nn.Module) -> int:
    """How many of `model`'s modules are torchao's Float8Linear."""
    return sum(1 for m in model.modules() if type(m).__name__ == "Float8Linear")


def _converter():
    """torchao's public convert_to_float8_training, imported quietly (engine/config/extras.py)."""
    return TORCHAO_FLOAT8.load("torchao.float8", "float8 = true").convert_to_float8_training
