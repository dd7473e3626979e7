"""Causal attention without a mask for packed training batches.

Training batches are packed token windows with no padding, so every row is plainly causal.
transformers still prepares a mask for each forward, and with no attention mask it checks the
position ids for packed sequences (`masking_utils.find_packed_sequence_indices`), which reads a
GPU value on the host: one device sync per model forward, which drains the GPU's queue and, on an
H200, left ~5 ms of every 121 ms distillation step with no kernel running.

transformers builds no mask at all for an attention implementation it has no mask function for,
so the stock SDPA function registered under its own name runs with `is_causal=True` and no sync.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from transformers import PretrainedConfig

CAUSAL_SDPA = "slimlab_causal_sdpa"


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register(CAUSAL_SDPA, sdpa_attention_forward)


def all_layers_causal(config) -> bool:
    """True when every layer attends to the whole causal prefix (no sliding windows)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return all(t == "full_attention" for t in layer_types)
    return not getattr(config, "sliding_window", None)


def use_causal_sdpa(model: nn.Module) -> bool:
    """Switch an SDPA model to mask-free causal SDPA for unpadded batches; False (unchanged) when
    it runs another attention implementation or has sliding-window layers, which need the mask."""
    config = model.config
    if config._attn_implementation != "sdpa" or not all_layers_causal(config):
        return False
    _register()
    config._attn_implementation = CAUSAL_SDPA
    return True


def restore_sdpa(config: PretrainedConfig) -> None:
    """Undo `use_causal_sdpa` on a config (before it meets padded or cached inputs)."""
    if config._attn_implementation == CAUSAL_SDPA:
        config._attn_implementation = "sdpa"
