"""Architecture adapter: where the parts of a Llama-family causal LM live.

Llama, Mistral, Qwen2 (q/k/v biases) and Qwen3 (per-head q_norm/k_norm) share one layout in
transformers 5:

    model.model.embed_tokens                      [vocab, hidden]
    model.model.layers[i].input_layernorm         [hidden]
    model.model.layers[i].self_attn.{q,k,v}_proj  [heads*head_dim | kv*head_dim, hidden] (+ bias)
    model.model.layers[i].self_attn.{q,k}_norm    [head_dim]          (qwen3)
    model.model.layers[i].self_attn.o_proj        [hidden, heads*head_dim]
    model.model.layers[i].post_attention_layernorm
    model.model.layers[i].mlp.{gate,up}_proj      [ffn, hidden];  mlp.down_proj [hidden, ffn]
    model.model.norm, model.lm_head               (lm_head tied to embed_tokens or not)

Pruning works on state-dict keys relative to a layer (`self_attn.q_proj.weight`) and rebuilds
a stock transformers model from the new config, so what is saved reloads unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from engine.config.shape import Shape, shape_from_config
from engine.errors import UserError
from engine.models.hf import check_supported

# A state-dict key inside decoder layer i: group 1 = i, group 2 = the key relative to the layer.
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.*)$")


@dataclass
class LayerParts:
    layer: nn.Module
    attn: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear
    input_norm: nn.Module
    post_norm: nn.Module


class Arch:
    """Named access to the parts of a supported model (see the module docstring)."""

    def __init__(self, model: PreTrainedModel):
        check_supported(getattr(model.config, "model_type", "?"), "model")
        self.model = model
        try:
            self.decoder = model.model
            self.layers = list(self.decoder.layers)
            self.embed = self.decoder.embed_tokens
            self.final_norm = self.decoder.norm
            self.lm_head = model.lm_head
        except AttributeError as e:
            raise UserError(f"model: unexpected module layout for {model.config.model_type} ({e}); "
                            "slimlab expects the stock transformers classes") from None
        self.shape: Shape = shape_from_config(model.config.to_dict())

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.embed.weight

    def parts(self, i: int) -> LayerParts:
        layer = self.layers[i]
        a, m = layer.self_attn, layer.mlp
        return LayerParts(layer, a, a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj,
                          m.down_proj, layer.input_layernorm, layer.post_attention_layernorm)


def config_dict(model: PreTrainedModel) -> dict[str, Any]:
    """The model's config as a plain dict (what config.json holds)."""
    return model.config.to_dict()


def rebuild(template: PreTrainedModel, cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A stock transformers model with config `cfg` whose weights are exactly `state`.

    The model is built without allocating weights, then takes the tensors of `state` as they
    are (device and dtype included); buffers such as the rotary frequencies are computed from
    the new config. Tied embeddings stay tied.
    """
    from accelerate import init_empty_weights

    config_cls = type(template.config)
    clean = {k: v for k, v in cfg.items() if k not in ("transformers_version", "architectures")}
    config = config_cls.from_dict(clean)
    attn = getattr(template.config, "_attn_implementation", None) or "sdpa"
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = dict(state)
    if tied:
        state.pop("lm_head.weight", None)
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"rebuild: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    if tied:
        model.tie_weights()
    first = next(iter(state.values()))
    model.to(first.device)  # buffers (rotary) follow the weights
    model.config.dtype = first.dtype
    model.eval()
    return model
