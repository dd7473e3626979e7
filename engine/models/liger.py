"""`kernels = "liger"`: Liger-Kernel's Triton RMSNorm, SwiGLU and RoPE in the training stages.

Liger (https://github.com/linkedin/Liger-Kernel, the optional `[liger]` extra) patches a loaded model
instance through its public `apply_liger_kernel_to_<model_type>(model=...)`: each RMSNorm and MLP
module gets Liger's `forward` bound on the instance, so the classes, parameters and state_dict keys
stay stock transformers (a saved student loads with plain `from_pretrained`). Its losses stay off:
the engine's fused KD loss works on the final hidden states (engine/distill/losses.py).

Two of Liger's side effects are process-wide, on the `modeling_<type>` module:
- it also swaps the module's RMSNorm and MLP classes (for models built later): undone at once, so
  only the instance passed here changes;
- RoPE has no module to patch (the attention forward calls the module's `apply_rotary_pos_emb`),
  so that function is replaced, for every model of the type in this process, by one that runs
  Liger's kernel on CUDA tensors and the stock function elsewhere. `undo_rope()` restores it.

Under `compile = true` the decoder layers are still compiled, around Liger's kernels: Liger marks its
RoPE dispatch `torch.compiler.disable` (a graph break per layer), and its autograd Functions run
their own Triton kernels instead of the ones Inductor would generate for the same element-wise work.

No torch import at module level. Whether the package is installed, and new enough, is
engine/config/liger_install.py's (the schema checks it as the file is read).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from engine.config.liger_install import install_problem
from engine.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

KERNELS = ("torch", "liger")
# model_type -> Liger's public patch function; every type slimlab prunes (engine/config/arch.py)
LIGER_PATCHES = {t: f"apply_liger_kernel_to_{t}" for t in ("llama", "mistral", "qwen2", "qwen3")}
SWIGLU_ACTS = ("silu", "swish")  # what Liger's SwiGLU computes, whatever the config says
_ORIGINAL = "_slimlab_original"  # attribute of our RoPE wrapper: the function it replaced


def model_problem(config: Any) -> str | None:
    """Why Liger's kernels do not fit this model (one line with the fix), else None."""
    model_type = getattr(config, "model_type", None)
    if model_type not in LIGER_PATCHES:
        return (f'Liger has no kernels for model_type \'{model_type}\' (it has them for '
                f'{", ".join(LIGER_PATCHES)}); set kernels = "torch"')
    act = getattr(config, "hidden_act", "silu")
    if act not in SWIGLU_ACTS:
        return (f'the MLP uses hidden_act \'{act}\' but Liger\'s SwiGLU computes silu; '
                'set kernels = "torch"')
    return None


def apply_kernels(model: nn.Module, kernels: str, cuda: bool, what: str = "model") -> bool:
    """Put the configured kernels into a training stage's model; True when Liger's are in.
    A UserError (one line, the fix) when they cannot run: no CUDA, package, model type."""
    if kernels == "torch":
        return False
    if kernels not in KERNELS:
        raise UserError(f'kernels: "{kernels}" is not one of {", ".join(KERNELS)}')
    problem = (None if cuda else 'Liger\'s Triton kernels need a CUDA GPU and this stage runs on the CPU; '
               'set kernels = "torch", or run on a GPU')
    problem = problem or install_problem() or model_problem(model.config)
    if problem:
        raise UserError(f'kernels = "liger" ({what}): {problem}')
    apply_liger(model)
    return True


def apply_liger(model: nn.Module, rope: bool = True) -> None:
    """Liger's RMSNorm and SwiGLU on this instance, and (`rope`) its RoPE for this model type on
    CUDA. Idempotent. Checks nothing about the device: see `apply_kernels`."""
    model_type = model.config.model_type
    patch = getattr(importlib.import_module("liger_kernel.transformers"), LIGER_PATCHES[model_type])
    modeling = _modeling_module(model_type)
    before = dict(vars(modeling))
    patch(rope=False, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False,
          model=model)
    _restore_module(modeling, before)  # Liger swapped the module's classes too: keep them stock
    if rope:
        _patch_rope(modeling)


def undo_rope() -> None:
    """Give every supported model type its stock RoPE function back (models patched earlier keep
    Liger's RMSNorm and SwiGLU)."""
    for model_type in LIGER_PATCHES:
        modeling = _modeling_module(model_type)
        original = getattr(modeling.apply_rotary_pos_emb, _ORIGINAL, None)
        if original is not None:
            modeling.apply_rotary_pos_emb = original


def patched_modules(model: nn.Module) -> list[str]:
    """Names of the modules that run Liger's forward (for tests and the log)."""
    return [name for name, m in model.named_modules() if m._get_name().startswith("Liger")]


def _modeling_module(model_type: str) -> Any:
    return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")


def _restore_module(module: Any, before: dict[str, Any]) -> None:
    for name, value in before.items():
        if vars(module).get(name) is not value:
            setattr(module, name, value)


def _patch_rope(modeling: Any) -> None:
    current = modeling.apply_rotary_pos_emb
    if getattr(current, _ORIGINAL, None) is not None:
        return
    from liger_kernel.transformers import liger_rotary_pos_emb

    def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # Liger's kernel is Triton (CUDA only): a CPU forward in the same process stays stock, and
        # so does a call with extra positional arguments (Liger's 5th is position_ids, not unsqueeze_dim)
        fn = liger_rotary_pos_emb if q.is_cuda and not args else current
        return fn(q, k, cos, sin, *args, **kwargs)

    setattr(apply_rotary_pos_emb, _ORIGINAL, current)
    modeling.apply_rotary_pos_emb = apply_rotary_pos_emb
