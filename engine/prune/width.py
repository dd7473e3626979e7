"""Width pruning: shrink the MLP, the hidden size and the attention heads by importance.

Every kept index list is in ascending (original) order, so a target equal to the source keeps
the model bit for bit. GQA stays consistent: KV groups are ranked by the sum of their query
heads, and every kept group keeps the same number of its best query heads. head_dim never
changes and is written into the config explicitly.

A search instead sorts the teacher once (`width_order`, `permute_width`: every axis most
important first, in place; a Llama-family model computes the same function with its channels
consistently permuted), after which every target's kept set is a prefix of each axis and a
candidate is made of views (`width_views`): the same student, its channels in another order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel

from engine.config.shape import Shape, student_config
from engine.errors import UserError
from engine.models.adapter import LAYER_KEY, Arch, config_dict, rebuild
from engine.prune.importance import Importance

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
    """Indices per axis: global hidden channels and, per layer, neurons / query heads / KV groups.
    Kept ones in ascending order (select_width), or all of them most important first (width_order)."""

    hidden: torch.Tensor
    ffn: list[torch.Tensor]
    heads: list[torch.Tensor]
    kv: list[torch.Tensor]


def rank(scores: torch.Tensor) -> torch.Tensor:
    """Indices from the most to the least important along the last dim (ties: lower index first).
    Every selection below keeps a prefix of it, so a teacher sorted by it keeps prefixes."""
    return torch.sort(scores.float(), dim=-1, descending=True, stable=True).indices


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, ascending; the full range when nothing is cut."""
    if k >= scores.shape[-1]:
        return torch.arange(scores.shape[-1])
    return rank(scores)[..., :k].sort(dim=-1).values


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


def _check_scores(imp: Importance, teacher: Shape) -> None:
    if imp.num_layers != teacher.num_layers or imp.mlp.shape[1] != teacher.intermediate_size \
            or imp.heads.shape[1] != teacher.num_heads or imp.hidden.shape[0] != teacher.hidden_size:
        raise UserError("importance: the scores do not match the teacher's shape; calibrate again")


def select_width(imp: Importance, teacher: Shape, student: Shape) -> WidthSelection:
    _check_scores(imp, teacher)
    heads, kv = [], []
    for i in range(teacher.num_layers):
        h, g = select_heads(imp.heads[i], teacher.num_kv_heads, student.num_kv_heads, student.num_heads)
        heads.append(h)
        kv.append(g)
    return WidthSelection(
        hidden=_top(imp.hidden, student.hidden_size),
        ffn=[_top(imp.mlp[i], student.intermediate_size) for i in range(teacher.num_layers)],
        heads=heads, kv=kv)


def width_order(imp: Importance, teacher: Shape) -> WidthSelection:
    """Every width axis ranked as select_width ranks it, most important first: hidden channels,
    each layer's neurons, KV groups, and query heads group by group (each group's own heads
    best first), so that a head's group is still `position // group size`."""
    _check_scores(imp, teacher)
    g = teacher.group_size
    heads, kv = [], []
    for i in range(teacher.num_layers):
        grouped = imp.heads[i].float().view(teacher.num_kv_heads, g)
        groups = rank(grouped.sum(-1))
        heads.append((rank(grouped[groups]) + groups[:, None] * g).flatten())
        kv.append(groups)
    return WidthSelection(hidden=rank(imp.hidden), ffn=[rank(imp.mlp[i]) for i in range(teacher.num_layers)],
                          heads=heads, kv=kv)


def sorted_importance(imp: Importance, order: WidthSelection) -> Importance:
    """The scores of a teacher permuted by `order` (what calibrating it would give): with them,
    select_width on the sorted teacher keeps the prefixes that width_views cuts."""
    return replace(imp, hidden=imp.hidden[order.hidden],
                   mlp=torch.stack([imp.mlp[i][p] for i, p in enumerate(order.ffn)]),
                   heads=torch.stack([imp.heads[i][p] for i, p in enumerate(order.heads)]))


def inverse(order: WidthSelection) -> WidthSelection:
    """The permutations that undo `order`."""
    def inv(p: torch.Tensor) -> torch.Tensor:
        return torch.argsort(p)

    return WidthSelection(hidden=inv(order.hidden), ffn=[inv(p) for p in order.ffn],
                          heads=[inv(p) for p in order.heads], kv=[inv(p) for p in order.kv])


def _rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Weight rows of the given heads: head h owns rows h*head_dim .. h*head_dim + head_dim - 1."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


# A kept set along one axis: indices, or (views) the length of a prefix.
Keep = torch.Tensor | int


def _slice(t: torch.Tensor, axes: dict[int, str], idx: dict[str, Keep]) -> torch.Tensor:
    for dim, kind in axes.items():
        keep = idx[kind]
        if keep.numel() != t.shape[dim] or not torch.equal(keep, torch.arange(t.shape[dim])):
            t = t.index_select(dim, keep.to(t.device))
    return t.contiguous()


def _view(t: torch.Tensor, axes: dict[int, str], idx: dict[str, Keep]) -> torch.Tensor:
    """A prefix of each axis as a view (no copy); a kept index list (query heads when a group
    loses heads) as a copy."""
    for dim, kind in axes.items():
        keep = idx[kind]
        if isinstance(keep, int):
            t = t.narrow(dim, 0, keep) if keep < t.shape[dim] else t
        else:
            t = t.index_select(dim, keep.to(t.device))
    return t


def _each(state: dict[str, torch.Tensor], model_type: str, per_layer: list[dict[str, Keep]],
          top: dict[str, Keep]) -> Iterator[tuple[str, torch.Tensor, dict[int, str], dict[str, Keep]]]:
    """(key, tensor, its axes, the kept sets of its layer) for every tensor of a state dict."""
    for key, t in state.items():
        m = LAYER_KEY.match(key)
        if m is not None:
            axes = LAYER_AXES.get(m.group(2))
            idx = per_layer[int(m.group(1))]
        else:
            axes, idx = TOP_AXES.get(key), top
        if axes is None:
            raise UserError(f"width pruning: unexpected weight '{key}' in a {model_type} model; "
                            "slimlab knows the stock transformers layout only")
        yield key, t, axes, idx


def _per_layer(sel: WidthSelection, head_dim: int) -> list[dict[str, Keep]]:
    return [{"hidden": sel.hidden, "ffn": sel.ffn[i], "q": _rows(sel.heads[i], head_dim),
             "kv": _rows(sel.kv[i], head_dim)} for i in range(len(sel.ffn))]


def prune_width(model: PreTrainedModel, sel: WidthSelection, student: Shape) -> PreTrainedModel:
    """A new model keeping the selected channels, neurons and heads of `model`."""
    arch = Arch(model)
    per_layer = _per_layer(sel, arch.shape.head_dim)
    state = {key: _slice(t, axes, idx)
             for key, t, axes, idx in _each(model.state_dict(), arch.shape.model_type, per_layer, {"hidden": sel.hidden})}
    return rebuild(model, student_config(config_dict(model), student), state)


@torch.no_grad()
def permute_width(model: PreTrainedModel, order: WidthSelection) -> None:
    """Reorder `model`'s channels, neurons and heads by `order` (width_order or its inverse), in
    place: each parameter keeps its storage, and the model computes the same function."""
    arch = Arch(model)
    params = dict(model.named_parameters())  # a tied lm_head is the embedding: permuted once
    per_layer = _per_layer(order, arch.shape.head_dim)
    for _, p, axes, idx in _each(params, arch.shape.model_type, per_layer, {"hidden": order.hidden}):
        p.copy_(_slice(p, axes, idx))  # one tensor at a time: a transient copy of one weight


def width_views(state: dict[str, torch.Tensor], teacher: Shape, student: Shape) -> dict[str, torch.Tensor]:
    """The student's state dict from that of a teacher sorted by width_order (layers already
    cut): a prefix of every axis, as views. Query heads are a prefix too unless the kept KV
    groups lose some of their heads; then those rows are copied."""
    hd, g = teacher.head_dim, teacher.group_size
    per_group = student.num_heads // student.num_kv_heads
    q: Keep = student.num_heads * hd
    if per_group < g and student.num_kv_heads > 1:  # the first per_group heads of each kept group
        heads = (torch.arange(student.num_kv_heads)[:, None] * g + torch.arange(per_group)).flatten()
        q = _rows(heads, hd)
    keep = {"hidden": student.hidden_size, "ffn": student.intermediate_size, "q": q,
            "kv": student.num_kv_heads * hd}
    per_layer = [keep] * student.num_layers
    return {key: _view(t, axes, idx)
            for key, t, axes, idx in _each(state, teacher.model_type, per_layer, {"hidden": student.hidden_size})}
