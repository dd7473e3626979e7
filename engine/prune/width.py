"""Width pruning: shrink the MLP, the hidden size and the attention heads by importance.

Every kept index list is in ascending (original) order, so a target equal to the source keeps
the model bit for bit. GQA stays consistent: KV groups are ranked by the sum of their query
heads, and every kept group keeps the same number of its best query heads. head_dim never
changes and is written into the config explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from engine.errors import UserError
from engine.models.adapter import LAYER_KEY, Arch, config_dict, rebuild
from engine.prune.importance import Importance
from engine.shapes.shape import Shape, student_config

# Which axis of each weight is indexed by what: "hidden" channels, "ffn" neurons,
# "q" (query-head rows), "kv" (key/value-head rows). Keys are relative to a decoder layer.
LAYER_AXES: dict[str, dict[int, str]] = {
    "self_attn.q_proj.weight": {0: "q", 1: "hidden"},
    "self_attn.q_proj.bias": {0: "q"},
    "self_attn.k_proj.weight": {0: "kv", 1: "hidden"},
    "self_attn.k_proj.bias": {0: "kv"},
    "self_attn.v_proj.weight": {0: "kv", 1: "hidden"},
    "self_attn.v_proj.bias": {0: "kv"},
    "self_attn.o_proj.weight": {0: "hidden", 1: "q"},
    "self_attn.o_proj.bias": {0: "hidden"},
    "self_attn.q_norm.weight": {},  # qwen3: per head_dim, shared by all heads
    "self_attn.k_norm.weight": {},
    "mlp.gate_proj.weight": {0: "ffn", 1: "hidden"},
    "mlp.gate_proj.bias": {0: "ffn"},
    "mlp.up_proj.weight": {0: "ffn", 1: "hidden"},
    "mlp.up_proj.bias": {0: "ffn"},
    "mlp.down_proj.weight": {0: "hidden", 1: "ffn"},
    "mlp.down_proj.bias": {0: "hidden"},
    "input_layernorm.weight": {0: "hidden"},
    "post_attention_layernorm.weight": {0: "hidden"},
}
TOP_AXES: dict[str, dict[int, str]] = {
    "model.embed_tokens.weight": {1: "hidden"},
    "model.norm.weight": {0: "hidden"},
    "lm_head.weight": {1: "hidden"},
}


@dataclass
class WidthSelection:
    """Kept indices (ascending): global hidden channels and, per layer, neurons / heads / groups."""

    hidden: torch.Tensor
    ffn: list[torch.Tensor]
    heads: list[torch.Tensor]
    kv: list[torch.Tensor]


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, ascending; the full range when nothing is cut."""
    if k >= scores.shape[-1]:
        return torch.arange(scores.shape[-1])
    return torch.topk(scores.float(), k, dim=-1).indices.sort(dim=-1).values


def select_heads(head_scores: torch.Tensor, num_kv: int, keep_kv: int, keep_heads: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept query heads, kept KV groups) of one layer; each kept group keeps keep_heads/keep_kv heads."""
    h = head_scores.shape[0]
    group = h // num_kv
    per_group = keep_heads // keep_kv
    grouped = head_scores.float().view(num_kv, group)
    groups = _top(grouped.sum(-1), keep_kv)
    within = _top(grouped[groups], per_group)  # [keep_kv, per_group]
    heads = (within + groups[:, None] * group).flatten()
    return heads, groups


def select_width(imp: Importance, teacher: Shape, student: Shape) -> WidthSelection:
    if imp.num_layers != teacher.num_layers or imp.mlp.shape[1] != teacher.intermediate_size \
            or imp.heads.shape[1] != teacher.num_heads or imp.hidden.shape[0] != teacher.hidden_size:
        raise UserError("importance: the scores do not match the teacher's shape; calibrate again")
    heads, kv = [], []
    for i in range(teacher.num_layers):
        h, g = select_heads(imp.heads[i], teacher.num_kv_heads, student.num_kv_heads, student.num_heads)
        heads.append(h)
        kv.append(g)
    return WidthSelection(
        hidden=_top(imp.hidden, student.hidden_size),
        ffn=[_top(imp.mlp[i], student.intermediate_size) for i in range(teacher.num_layers)],
        heads=heads, kv=kv)


def _rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Weight rows of the given heads: head h owns rows h*head_dim .. h*head_dim + head_dim - 1."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _slice(t: torch.Tensor, axes: dict[int, str], idx: dict[str, torch.Tensor]) -> torch.Tensor:
    for dim, kind in axes.items():
        keep = idx[kind]
        if keep.numel() != t.shape[dim] or not torch.equal(keep, torch.arange(t.shape[dim])):
            t = t.index_select(dim, keep.to(t.device))
    return t.contiguous()


def prune_width(model: PreTrainedModel, sel: WidthSelection, student: Shape) -> PreTrainedModel:
    """A new model keeping the selected channels, neurons and heads of `model`."""
    arch = Arch(model)
    hd = arch.shape.head_dim
    per_layer = [
        {"hidden": sel.hidden, "ffn": sel.ffn[i], "q": _rows(sel.heads[i], hd), "kv": _rows(sel.kv[i], hd)}
        for i in range(arch.shape.num_layers)
    ]
    top = {"hidden": sel.hidden}
    state: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        m = LAYER_KEY.match(key)
        if m is not None:
            axes = LAYER_AXES.get(m.group(2))
            idx = per_layer[int(m.group(1))]
        else:
            axes, idx = TOP_AXES.get(key), top
        if axes is None:
            raise UserError(f"width pruning: unexpected weight '{key}' in a {arch.shape.model_type} model; "
                            "slimlab knows the stock transformers layout only")
        state[key] = _slice(t, axes, idx)
    return rebuild(model, student_config(config_dict(model), student), state)
