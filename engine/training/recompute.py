"""Gradient checkpointing by layer (`gradient_checkpointing = true | false | a fraction of the layers`):
which decoder layers keep only their input and are recomputed in backward. engine/resources/memory.py
(activation_bytes) prices the same choice."""

from __future__ import annotations

from torch import nn

from engine.config.schema import checkpointed_layers
from engine.distill.objective import decoder_layers


def checkpoint_layers(model: nn.Module, setting: bool | float) -> int:
    """Gradient checkpointing on the first `checkpointed_layers` decoder layers (all for true): those keep
    only their input and are recomputed in backward; the later ones keep their activations, and backward
    frees those first, so a recomputed layer never sits on top of them. Returns how many are checkpointed."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = decoder_layers(model)
    keep = checkpointed_layers(setting, len(layers))
    for layer in list(layers)[keep:]:
        layer.gradient_checkpointing = False  # transformers' GradientCheckpointingLayer reads it per call
    return keep
