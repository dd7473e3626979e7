"""Model shapes from config dicts: parameter counts and prune-target checks, without torch.

`check` and the TUI validate pruning targets through this module before any weights are
loaded, so it imports neither torch nor transformers. The prune stage runs the very same
checks on the loaded config, so a target that passes `check` is the one that gets pruned.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

from engine.config.arch import SUPPORTED_MODEL_TYPES
from engine.errors import ConfigError
from engine.stages.prune_methods import DEPTH, WIDTH, method_of

# transformers' config defaults for the keys that decide a shape (v5 config classes).
# head_dim None means hidden_size // num_attention_heads.
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=None, head_dim=None, tie_word_embeddings=False),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=None, tie_word_embeddings=False),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=None, tie_word_embeddings=False),
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, tie_word_embeddings=False),
}


@dataclass(frozen=True)
class Shape:
    """Everything that decides the parameter layout of a Llama-family decoder."""

    model_type: str
    vocab_size: int | None  # None when unknown (a scratch model whose tokenizer is not trained yet)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool  # q/k/v projections carry a bias (qwen2 always; llama/qwen3 with attention_bias)
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool  # qwen3: per-head RMSNorm on q and k (head_dim weights each)

    @property
    def group_size(self) -> int:
        """Query heads per KV group."""
        return self.num_heads // self.num_kv_heads

    def describe(self) -> str:
        kv = f"{self.num_heads} heads / {self.num_kv_heads} kv" if self.num_kv_heads != self.num_heads \
            else f"{self.num_heads} heads"
        return (f"{self.num_layers} layers, hidden {self.hidden_size}, ffn {self.intermediate_size}, "
                f"{kv} (head_dim {self.head_dim})")


def check_model_type(model_type: Any, where: str, error: type[Exception] = ConfigError) -> str:
    """`model_type` itself when slimlab supports it; else `error` naming the supported types.

    The one unsupported-model check: experiment files get a ConfigError (the default), models
    loaded at run time a UserError (engine.models.hf.check_supported).
    """
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise error(f"{where}: model_type '{model_type}' is not supported; slimlab prunes "
                    f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    return model_type


def shape_from_config(cfg: dict[str, Any], where: str = "model") -> Shape:
    """A Shape from a transformers config dict (config.json, an arch table, ...)."""
    mt = check_model_type(cfg.get("model_type"), where)
    d = {**DEFAULTS[mt], **{k: v for k, v in cfg.items() if v is not None}}
    heads = int(d["num_attention_heads"])
    kv = int(d.get("num_key_value_heads") or heads)
    hidden = int(d["hidden_size"])
    head_dim = int(d.get("head_dim") or hidden // heads)
    attn_bias = bool(d.get("attention_bias", False))
    if heads % kv:
        raise ConfigError(f"{where}: num_attention_heads = {heads} is not a multiple of "
                          f"num_key_value_heads = {kv}")
    return Shape(
        model_type=mt,
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        tied=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=True if mt == "qwen2" else (attn_bias if mt in ("llama", "qwen3") else False),
        o_bias=attn_bias if mt in ("llama", "qwen3") else False,
        mlp_bias=bool(d.get("mlp_bias", False)) if mt == "llama" else False,
        qk_norm=mt == "qwen3",
    )


def count_params(s: Shape) -> int:
    """Parameters of the model with this shape (tied embeddings counted once)."""
    return count_embedding_params(s) + count_non_embedding_params(s)


def count_embedding_params(s: Shape) -> int:
    v = s.vocab_size or 0
    return v * s.hidden_size * (1 if s.tied else 2)


def count_non_embedding_params(s: Shape) -> int:
    d, f, h, k, hd = s.hidden_size, s.intermediate_size, s.num_heads, s.num_kv_heads, s.head_dim
    attn = d * h * hd + 2 * d * k * hd + h * hd * d
    attn += (h * hd + 2 * k * hd) if s.qkv_bias else 0
    attn += d if s.o_bias else 0
    attn += 2 * hd if s.qk_norm else 0
    mlp = 3 * d * f + ((2 * f + d) if s.mlp_bias else 0)
    return s.num_layers * (attn + mlp + 2 * d) + d  # + 2 norms per layer, + final norm


# ---- prune targets --------------------------------------------------------------------


@dataclass(frozen=True)
class StudentShape:
    """What a [[prune]] table turns the teacher into (before importance picks the channels)."""

    name: str
    method: str
    shape: Shape
    drop_layers: tuple[int, ...] | None = None  # explicit depth prune
    num_drop: int = 0  # layers dropped by selection (depth, or width with num_layers)
    selection: str | None = None

    def describe(self) -> str:
        if self.drop_layers is not None:
            return f"drop layers {_ranges(self.drop_layers)}"
        if self.num_drop:
            return f"drop {self.num_drop} layers chosen by {self.selection}"
        return self.method


def layer_selection(p: Any) -> str:
    """How a [[prune]] table chooses the layers it drops: its `selection`, else the default of its
    method (PruneMethod.selection). Depth keeps block influence (free with calibration); width and
    search use the LM-loss increase, which chose far better layers on SmolLM2-135M (validation loss
    5.85 against 9.58 right after pruning)."""
    return p.selection or method_of(p.method).selection


def selection_cost(selection: str, num_layers: int) -> str:
    """What choosing layers by `selection` costs on top of calibration, for `check`."""
    if selection == "lm-loss":
        return f"{num_layers + 1} extra forwards per calibration batch (each layer skipped in turn, and none)"
    if selection == "last":
        return "nothing: no scores needed"
    what = "block influence" if selection == "block-influence" else "angular distances"
    return f"nothing extra: the calibration pass gives the {what}"


def _ranges(idx: tuple[int, ...] | list[int]) -> str:
    out, s = [], sorted(idx)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(f"{s[i]}" if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ", ".join(out)


def _multiples(n: int, of: int, below: int | None = None) -> str:
    """'96 or 128': the multiples of `of` around `n` (the first valid ones a user could pick)."""
    lo = (n // of) * of
    hi = lo + of
    opts = [x for x in (lo, hi) if x >= of and (below is None or x <= below)]
    return " or ".join(str(x) for x in opts) if opts else str(of)


def student_shape(teacher: Shape, p: Any, where: str) -> StudentShape:
    """Check one [[prune]] table against the teacher's shape; raise ConfigError with the fix.

    `p` is an engine.config.PruneConfig; `where` prefixes every message, e.g.
    "exp.toml: prune[width]".
    """
    m = method_of(p.method)
    if m.searches:  # many shapes, known only with the budget: engine.shapes.candidates
        raise ValueError("student_shape: a search student has no single shape; use search_space")
    return _depth_shape(teacher, p, where) if m.layers_only else _width_shape(teacher, p, where)


def _kept_layers(t: Shape, p: Any, where: str) -> int:
    """p.num_layers checked against the teacher's depth."""
    n = t.num_layers
    if p.num_layers > n:
        raise ConfigError(f"{where}.num_layers: {p.num_layers} is larger than the teacher's {n} layers; "
                          f"choose 1..{n - 1}")
    if p.num_layers == n and method_of(p.method).layers_only:
        raise ConfigError(f"{where}.num_layers: {n} keeps every layer of the teacher; choose 1..{n - 1} "
                          "to prune")
    return p.num_layers


def _depth_shape(t: Shape, p: Any, where: str) -> StudentShape:
    n = t.num_layers
    if p.drop_layers is not None:
        bad = [i for i in p.drop_layers if i >= n]
        if bad:
            raise ConfigError(f"{where}.drop_layers: layer {bad[0]} is out of range; the teacher has {n} "
                              f"layers, numbered 0..{n - 1}")
        if len(p.drop_layers) >= n:
            raise ConfigError(f"{where}.drop_layers: drops all {n} layers; keep at least one "
                              f"(drop at most {n - 1})")
        drop = tuple(sorted(p.drop_layers))
        return StudentShape(p.name, DEPTH.name, replace(t, num_layers=n - len(drop)), drop_layers=drop)
    kept = _kept_layers(t, p, where)
    return StudentShape(p.name, DEPTH.name, replace(t, num_layers=kept), num_drop=n - kept,
                        selection=layer_selection(p))


def _width_shape(t: Shape, p: Any, where: str) -> StudentShape:
    def not_larger(key: str, value: int, source: int, label: str) -> None:
        if value > source:
            raise ConfigError(f"{where}.{key}: {value} is larger than the teacher's {label} {source}; "
                              f"choose at most {source}")

    ffn = p.ffn_hidden_size or t.intermediate_size
    hidden = p.hidden_size or t.hidden_size
    not_larger("ffn_hidden_size", ffn, t.intermediate_size, "intermediate_size")
    not_larger("hidden_size", hidden, t.hidden_size, "hidden_size")

    kv = p.num_key_value_heads
    heads = p.num_attention_heads
    if kv is not None:
        not_larger("num_key_value_heads", kv, t.num_kv_heads, "num_key_value_heads")
    if heads is not None:
        not_larger("num_attention_heads", heads, t.num_heads, "num_attention_heads")
    if heads is None:
        # heads follow their KV groups: each kept group keeps all its query heads
        heads = (kv or t.num_kv_heads) * t.group_size
    if kv is None:
        # MHA stays MHA; GQA keeps its groups and spreads the kept heads over them
        kv = heads if t.num_kv_heads == t.num_heads else t.num_kv_heads
    if heads % kv:
        raise ConfigError(f"{where}.num_attention_heads: {heads} is not a multiple of num_key_value_heads = "
                          f"{kv}; every KV group keeps the same number of query heads, e.g. "
                          f"{_multiples(heads, kv, t.num_heads)}")
    if heads // kv > t.group_size:
        raise ConfigError(f"{where}.num_attention_heads: {heads} heads over {kv} KV groups is {heads // kv} "
                          f"per group, but the teacher's groups have {t.group_size}; use at most "
                          f"{kv * t.group_size} heads or more KV groups")
    if hidden < t.head_dim:
        raise ConfigError(f"{where}.hidden_size: {hidden} is below the head size {t.head_dim}; choose at "
                          f"least {t.head_dim}")
    if t.model_type == "llama" and hidden % heads:
        # LlamaConfig refuses to load a config whose hidden_size is not a multiple of the heads
        raise ConfigError(f"{where}.hidden_size: {hidden} is not a multiple of num_attention_heads = {heads} "
                          f"(Llama configs require it); e.g. {_multiples(hidden, heads, t.hidden_size)}")
    kept = t.num_layers if getattr(p, "num_layers", None) is None else _kept_layers(t, p, where)
    student = replace(t, hidden_size=hidden, intermediate_size=ffn, num_heads=heads, num_kv_heads=kv,
                      num_layers=kept)
    drop = t.num_layers - kept
    return StudentShape(p.name, WIDTH.name, student, num_drop=drop, selection=layer_selection(p) if drop else None)


# ---- student config.json --------------------------------------------------------------


def student_config(teacher_cfg: dict[str, Any], student: Shape, kept_layers: list[int] | None = None
                   ) -> dict[str, Any]:
    """The teacher's config dict with the student's sizes; head_dim is written explicitly.

    `kept_layers` (depth pruning): teacher indices of the layers that stay, in order; per-layer
    lists such as `layer_types` are cut to match.
    """
    cfg = copy.deepcopy(teacher_cfg)
    cfg.update(hidden_size=student.hidden_size, intermediate_size=student.intermediate_size,
               num_attention_heads=student.num_heads, num_key_value_heads=student.num_kv_heads,
               head_dim=student.head_dim, num_hidden_layers=student.num_layers)
    if kept_layers is not None:
        assert len(kept_layers) == student.num_layers
        for key, value in list(cfg.items()):
            if isinstance(value, list) and len(value) == teacher_cfg.get("num_hidden_layers") and \
                    key.endswith("layer_types"):
                cfg[key] = [value[i] for i in kept_layers]
        if isinstance(cfg.get("max_window_layers"), int):
            # qwen2/qwen3: layers below max_window_layers use full attention
            cfg["max_window_layers"] = sum(1 for i in kept_layers if i < teacher_cfg["max_window_layers"])
    return cfg
