"""Depth pruning: drop whole decoder layers.

The student is rebuilt from a config with fewer layers, so every attention module gets its new
layer_idx (the KV cache indexes by it) and per-layer config lists stay consistent.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import PreTrainedModel

from engine.config.shape import student_config
from engine.errors import UserError
from engine.models.adapter import LAYER_KEY, Arch, config_dict, rebuild
from engine.prune.importance import Importance


def select_layers(imp: Importance | None, num_layers: int, num_drop: int, selection: str) -> list[int]:
    """Which `num_drop` of `num_layers` layers to drop (0-indexed, ascending)."""
    if not 0 < num_drop < num_layers:
        raise UserError(f"num_layers: cannot drop {num_drop} of {num_layers} layers")
    if selection == "last":
        return list(range(num_layers - num_drop, num_layers))
    if imp is None:
        raise UserError(f"selection = \"{selection}\" needs importance scores")
    if imp.num_layers != num_layers:
        raise UserError(f"importance: scores are for {imp.num_layers} layers, the model has {num_layers}")
    if selection == "block-influence":
        scores = imp.block_influence
    elif selection == "lm-loss":
        if imp.lm_loss is None:
            raise UserError("selection = \"lm-loss\": the importance scores have no LM-loss layer scores; "
                            "calibrate again (remove importance_from)")
        scores = imp.lm_loss
    elif selection == "contiguous":
        if imp.angular is None:
            raise UserError("selection = \"contiguous\": the importance scores have no angular distances; "
                            "calibrate again (remove importance_from)")
        n = num_drop
        dist = torch.stack([imp.angular[s, s + n] for s in range(num_layers - n + 1)])
        start = int(torch.argmin(dist))
        return list(range(start, start + n))
    else:
        raise UserError(f"selection: unknown '{selection}'; use block-influence, lm-loss, contiguous or last")
    # the least important layers; ties go to the later layer (stable order on -index)
    order = sorted(range(num_layers), key=lambda i: (float(scores[i]), -i))
    return sorted(order[:num_drop])


def prune_depth(model: PreTrainedModel, drop: list[int]) -> PreTrainedModel:
    """A new model without the layers in `drop`; weights are shared with `model`, not copied."""
    arch = Arch(model)
    n = arch.shape.num_layers
    bad = [i for i in drop if not 0 <= i < n]
    if bad or len(set(drop)) >= n:
        raise UserError(f"drop_layers: cannot drop {sorted(drop)} from a model of {n} layers")
    kept = [i for i in range(n) if i not in set(drop)]
    state = kept_layers(model.state_dict(), kept)
    cfg = student_config(config_dict(model), replace(arch.shape, num_layers=len(kept)), kept_layers=kept)
    return rebuild(model, cfg, state)


def kept_layers(state: dict[str, torch.Tensor], kept: list[int]) -> dict[str, torch.Tensor]:
    """A state dict without the layers not in `kept` (teacher indices, ascending); the others are
    renumbered 0..len(kept)-1. The tensors are those of `state`."""
    new_index = {old: new for new, old in enumerate(kept)}
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        m = LAYER_KEY.match(key)
        if m is None:
            out[key] = t
        elif int(m.group(1)) in new_index:
            out[f"model.layers.{new_index[int(m.group(1))]}.{m.group(2)}"] = t
    return out
