"""`PruneMethod`: the record of one [[prune]] `method` (depth, width, search), the single place that
knows what a method is: the schema's key checks, the shape planning, the prune stage's body, `check`,
the resource model and Compose ask its traits instead of comparing the method's name.

The code that differs by method stays where its subject is (the shapes in engine/config/shape.py, a
search's candidates in engine/shapes/candidates.py, the stage in engine/prune/stage_body.py) and is
picked by a trait here. Torch-free and pydantic-free, like the stage kinds: the TUI imports it at
start-up (through engine.config and engine.contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError

# a search's speed budget: the targets, then how they are measured (engine/search/speed_budget.py)
SPEED_KEYS = ("target_decode_ms", "target_prefill_tokens_per_s", "speed_batch_size", "speed_prompt_tokens",
              "speed_new_tokens", "speed_fit_shapes")


@dataclass(frozen=True)
class PruneMethod:
    name: str  # the [[prune]] `method` value
    summary: str  # one line: what it cuts (`check`, docs)
    # the keys stating its target, None when unset; set in a prune of a method without them, they are
    # refused ("hidden_size: a width key in a depth prune"), a search's before anything else
    targets: tuple[str, ...]
    # Compose's fields for it, in order (each method's form ends with selection and calibration_samples)
    fields: tuple[str, ...]
    accepts: tuple[str, ...] = ()  # other methods' target keys it takes too (width: num_layers)
    # the student is described by a budget, not a shape: many candidates scored (search.json), a speed
    # budget, an audit, a score task (engine/search/, engine/shapes/candidates.py)
    searches: bool = False
    # cuts whole layers only (drop_layers or num_layers): keeping every layer prunes nothing
    layers_only: bool = False
    # how it chooses the layers it drops when [[prune]] `selection` is unset (engine.config.shape.layer_selection)
    selection: str = "lm-loss"
    # Compose: a new student's targets before the teacher is known (the 8B recipe's), as (key, value) pairs
    recipe: tuple[tuple[str, Any], ...] = ()
    # Compose: the new form's student of this method also gets this hidden size (the recipe's 4096 -> 3072);
    # fitting it to a smaller teacher clears it
    recipe_hidden: int | None = None
    # Compose: sized from the teacher once known, by halving this key (None: the recipe's targets stay)
    halves: str | None = None
    in_new_form: bool = False  # a new Compose form starts with a student of this method
    # its student is the teacher without some layers, sharing the teacher's tensors (engine/prune/depth.py):
    # the prune stage holds no second copy (measured on an H100 at 8B: 19.6 GiB where a copy made 23.4)
    shares_teacher_weights: bool = False


DEPTH = PruneMethod(
    name="depth", summary="drop whole layers",
    targets=("drop_layers", "num_layers"),
    fields=("drop_layers", "num_layers"),
    layers_only=True, selection="block-influence",
    recipe=(("num_layers", 16),), halves="num_layers", in_new_form=True, shares_teacher_weights=True,
)

WIDTH = PruneMethod(
    name="width", summary="shrink the MLP, hidden size and heads; with num_layers, drop layers too",
    targets=("ffn_hidden_size", "hidden_size", "num_attention_heads", "num_key_value_heads"),
    fields=("ffn_hidden_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "num_layers"),
    accepts=("num_layers",),  # depth and width in one student
    recipe=(("ffn_hidden_size", 9216),), recipe_hidden=3072, halves="ffn_hidden_size", in_new_form=True,
)

SEARCH = PruneMethod(
    name="search", summary="the best shape for a budget (parameters, memory, speed)",
    targets=("target_params", "target_memory_gb", "memory_seq_length", "score_task") + SPEED_KEYS,
    fields=("target_params", "target_memory_gb", "memory_seq_length", "memory_batch_size", "tolerance", "axes",
            "hidden_multiple", "ffn_multiple", "top_k", "score", "score_steps", "score_task", "audit"),
    searches=True,
    recipe=(("target_params", 0.5),),
)

METHODS: tuple[PruneMethod, ...] = (DEPTH, WIDTH, SEARCH)  # the schema's order (the Literal's)
METHOD_NAMES: tuple[str, ...] = tuple(m.name for m in METHODS)
_BY_NAME = {m.name: m for m in METHODS}


def method_or_none(name: Any) -> PruneMethod | None:
    """The record of `name`; None for anything else (a hand-edited file's typo, a missing key)."""
    return _BY_NAME.get(name) if isinstance(name, str) else None


def method_of(name: str) -> PruneMethod:
    """The record of `name`; ConfigError naming the methods for anything else."""
    m = method_or_none(name)
    if m is None:
        raise ConfigError(f"method: {name!r} is not a prune method; use one of {', '.join(METHOD_NAMES)}")
    return m
