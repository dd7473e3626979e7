"""What a training run is set up with: the accelerator (DDP, or FSDP2 configured in code), the
optimizer (fused AdamW, or MasterAdamW over a bf16 student), the learning-rate schedule and the
card's peak FLOP/s for MFU."""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any

import torch
from torch import nn

from engine.config import TrainConfig
from engine.training.master_adamw import MasterAdamW

# Dense bf16 tensor-core peak per GPU, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "B200": 2250e12,
              "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12}


# ---- accelerate ------------------------------------------------------------------------


CAP_ENV = "SLIMLAB_GPU_MEMORY_CAP_GIB"  # benchmarks: run as on a smaller card (an 80 GB H100 on an H200)


def cap_gpu_memory(device: torch.device) -> float | None:
    """With SLIMLAB_GPU_MEMORY_CAP_GIB set on CUDA: the allocator may take no more than that many GiB
    (torch's per-process fraction); the cap, or None."""
    raw = os.environ.get(CAP_ENV)
    if not raw or device.type != "cuda":
        return None
    cap = float(raw)
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), index)
    return cap


def make_accelerator(strategy: str = "ddp", mixed_precision: str = "bf16",
                     layer_classes: list[str] | None = None) -> Any:
    """An Accelerator: bf16 autocast + DDP, or FSDP2 configured here (no accelerate config file)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cuda = torch.cuda.is_available()
    mp = mixed_precision if cuda else "no"
    kwargs: dict[str, Any] = {}
    if strategy == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate.utils import FullyShardedDataParallelPlugin

        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=layer_classes,
            reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT",
            cpu_ram_efficient_loading=False,
            # bf16 compute, fp32 gradient reduction and fp32 loss out of the root module
            mixed_precision_policy=({"param_dtype": half, "reduce_dtype": torch.float32,
                                     "output_dtype": torch.float32} if half else None),
        )
    else:
        kwargs["kwargs_handlers"] = [DistributedDataParallelKwargs(gradient_as_bucket_view=True)]
    return Accelerator(mixed_precision=mp, cpu=not cuda, **kwargs)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_FLOPS[key]
    return None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr over warmup_steps, then cosine decay to min_lr at the last step."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(module: nn.Module, cfg: TrainConfig, master: bool | str = False) -> torch.optim.Optimizer:
    """Fused AdamW (CUDA and CPU); no weight decay on norms and biases (1-D parameters).
    Fused, because it can skip a step on the device (`found_inf`) without a host sync.

    `master`: the module's parameters become bf16 and the optimizer keeps their fp32 master
    copies (engine/training/master_adamw.py), with the same update and the same on-device skip;
    `master = "stochastic"`: bf16 parameters without fp32 copies, updated with stochastic rounding.
    cfg.optimizer_states = "bfloat16" (or "int8": 8 bits, engine/training/int8_moments.py): the moments
    in bf16, in MasterAdamW either way (without `master` its parameters stay fp32 and are their own
    masters; torch's AdamW has fp32 moments only)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    states = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}[cfg.optimizer_states]
    if master or states != torch.float32:
        # one Triton kernel per tensor on CUDA (master_weights_apply asks for Triton; the fp32 path may not have it)
        fused = any(p.is_cuda for p in decay + no_decay) and importlib.util.find_spec("triton") is not None
        return MasterAdamW(groups, lr=cfg.lr, betas=betas, eps=1e-8, fused=fused, state_dtype=states,
                           dtype=torch.bfloat16 if master else None, stochastic=master == "stochastic")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=1e-8, fused=True)


def master_weights_apply(accelerator: Any, accumulation: int) -> bool:
    """bf16 parameters with fp32 masters in the optimizer, instead of fp32 parameters under autocast:
    on CUDA with bf16 mixed precision, except under FSDP2 (its own policy keeps fp32 shards) and
    except DDP with gradient accumulation (DDP sums the micro-batches' gradients in the parameters'
    dtype, and they must not add up in bf16; on one process the optimizer folds them into fp32)
    and without Triton (the update's kernel)."""
    return (accelerator.device.type == "cuda" and accelerator.mixed_precision == "bf16"
            and not accelerator.is_fsdp2 and (accelerator.num_processes == 1 or accumulation == 1)
            and importlib.util.find_spec("triton") is not None)
