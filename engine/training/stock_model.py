"""The trained student as a stock transformers model: what a training stage writes to model/ (the
recipe's `finish`, engine/training/loop.py), in [model].dtype, with sdpa attention restored."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from engine.models.attention import restore_sdpa


def stock_model(config: Any, state: dict[str, torch.Tensor], dtype_name: str) -> nn.Module:
    """A plain transformers model of the student's `config` holding `state` in `dtype_name`."""
    from transformers import AutoModelForCausalLM

    from engine.models.hf import torch_dtype

    dtype = torch_dtype(dtype_name)
    config = copy.deepcopy(config)
    restore_sdpa(config)
    cast: dict[int, torch.Tensor] = {}  # tied weights: one cast tensor each
    state = {k: cast.setdefault(id(v), v.detach().to("cpu", dtype)) for k, v in state.items()}
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(state, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    missing = [n for n, p in fresh.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"final model: parameters missing from the trained state: {missing[:3]}")
    fresh.config.use_cache = True
    return fresh
