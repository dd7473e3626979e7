"""The [[prune]] section of the experiment schema: one student each (depth, width or a search), with the
checks that need no files. Torch-free, like the whole schema (engine/config/schema.py holds the others)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from engine.config.section_base import Section, slug
from engine.stages.prune_methods import DEPTH, METHODS, SPEED_KEYS, WIDTH, PruneMethod, method_of

SearchAxis = Literal["num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_key_value_heads"]

# SPEED_KEYS (engine.stages.prune_methods): a search's speed budget, the targets, then how they are measured


# "distill-kd"'s score_steps unless set (capped at the [distill] run's steps, engine/config/schema.py): on SmolLM2 its
# ranking settled from about 40 steps of the run, and a search scored with 50 picked the best audited shape
# (benchmarks/RESULTS.md, "A search scored by distill-kd"); the other distill scores keep score_steps' default
KD_SCORE_STEPS = 50


def score_window(score_steps: int) -> int:
    """"distill-kd": the last steps whose distillation loss is averaged, a fifth of score_steps. Every candidate sees
    the same batches, so a shape's loss is compared batch for batch; on SmolLM2 any window from 1 to half of 50+
    steps ranked the same (benchmarks/RESULTS.md)."""
    return max(1, score_steps // 5)


class PruneConfig(Section):
    name: str
    method: Literal["depth", "width", "search"]  # engine.stages.prune_methods.METHODS (tests/test_prune_methods.py)
    # depth (width and search drop layers too, chosen by the same selection)
    drop_layers: list[int] | None = None
    num_layers: int | None = Field(default=None, ge=1)
    # None: block-influence for depth, lm-loss for width and search (engine.config.shape.layer_selection)
    selection: Literal["block-influence", "lm-loss", "contiguous", "last"] | None = None
    # width
    ffn_hidden_size: int | None = Field(default=None, ge=1)
    hidden_size: int | None = Field(default=None, ge=1)
    num_attention_heads: int | None = Field(default=None, ge=1)
    num_key_value_heads: int | None = Field(default=None, ge=1)
    # importance (calibration)
    importance: Literal["activation", "random"] = "activation"
    importance_from: str | None = None  # reuse an importance.json instead of calibrating
    calibration_samples: int = Field(default=1024, ge=1)
    calibration_batch_size: int = Field(default=8, ge=1)
    batch_agg: Literal["l2", "mean", "max"] = "l2"
    seq_agg: Literal["mean", "l2", "max"] = "mean"
    # baselines / ablations
    reinit: bool = False  # re-initialise the pruned weights: a from-scratch model of the same shape
    distill: dict[str, Any] | None = None  # this student's overrides of [distill] keys, e.g. {loss = "ce"}
    # search: the student described by its budget (engine/search/)
    target_params: int | float | str | None = None  # 81_000_000, "4.5B", or 0.6 = a fraction of the teacher
    target_memory_gb: float | None = Field(default=None, gt=0)  # GiB: weights + KV cache, in [model].dtype
    memory_seq_length: int | None = Field(default=None, ge=1)  # KV cache length; default [data].seq_length
    memory_batch_size: int = Field(default=1, ge=1)
    tolerance: float = Field(default=0.03, gt=0.0, lt=1.0)
    axes: list[SearchAxis] = Field(default_factory=lambda: ["num_layers", "hidden_size", "ffn_hidden_size"])
    hidden_multiple: int = Field(default=64, ge=1)  # hardware-friendly steps of the searched sizes
    ffn_multiple: int = Field(default=64, ge=1)
    top_k: int = Field(default=10, ge=1)  # the best-screened candidates given the full score
    screen_batches: int = Field(default=2, ge=1)  # validation batches of the screen (loss right after pruning)
    screen_max: int = Field(default=2000, ge=1)  # candidates screened at most (spread evenly past it)
    # "distill+loss": ranked by the distill score's rank plus the loss after pruning's; "distill-kd": the [distill]
    # run's own loss over the last fifth of its first score_steps steps (search/scoring.py)
    score: Literal["loss", "distill", "distill+loss", "distill-kd"] = "loss"
    score_steps: int = Field(default=20, ge=1)  # a distill score's steps of the short distillation ("distill-kd": 50)
    score_task: str | None = None  # an [eval] task scored instead of the loss
    # the short distillation repeated on this many data orders (seed, seed + 1, ...), the mean scored: its run-to-run
    # noise, not the audit's, limited the ranking on SmolLM2 (benchmarks/RESULTS.md, "The audit with two seeds")
    score_seeds: int = Field(default=1, ge=1, le=8)
    audit: int = Field(default=0, ge=0)  # after the search: the N best-scored distilled in full (search/audit.py)
    # each audited candidate distilled this many times ([distill] seed, seed + 1, ...): its final loss is the mean,
    # and the audit says how well it agrees with itself (search/audit.py)
    audit_seeds: int = Field(default=1, ge=1, le=8)
    # search: speed budgets, measured on the prune stage's device (engine/search/speed_budget.py); they
    # narrow target_params / target_memory_gb (a shape must meet both)
    target_decode_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # ms per generated token
    target_prefill_tokens_per_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    speed_batch_size: int | None = Field(default=None, ge=1)  # default: the smallest [eval] speed_batch_sizes, or 1
    speed_prompt_tokens: int | None = Field(default=None, ge=1)  # default: [eval]'s, else the device's
    speed_new_tokens: int | None = Field(default=None, ge=2)  # default: [eval]'s, else the device's
    speed_fit_shapes: int | None = Field(default=None, ge=4, le=500)  # shapes timed for the cost model; default 12

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return slug(v, "name")

    @property
    def distill_scored(self) -> bool:
        """Whether a short distillation scores the candidates (a "distill..." score, no score_task)."""
        return self.score != "loss" and not self.score_task

    @model_validator(mode="after")
    def _score_seeds(self) -> PruneConfig:
        if "score_seeds" in self.model_fields_set and self.score_seeds > 1 and not self.distill_scored:
            raise ValueError('score_seeds: repeats the short distillation of score = "distill", "distill+loss" or '
                             '"distill-kd"; set one of those too (a loss or a task scores the same each time)')
        return self

    @model_validator(mode="after")
    def _audit(self) -> PruneConfig:
        """audit: a search's ranking checked by distilling its best candidates; N of the scored ones, N >= 2."""
        if "audit_seeds" in self.model_fields_set and self.audit_seeds > 1 and not self.audit:
            raise ValueError("audit_seeds: repeats the audit's distillations; set audit = N (the candidates to "
                             "distil) too")
        if "audit" not in self.model_fields_set or not self.audit:
            return self
        if not method_of(self.method).searches:
            owner = next(m for m in METHODS if m.searches)
            raise ValueError(f"audit: a {owner.name} key in a {self.method} prune; use method = \"{owner.name}\"")
        if self.audit == 1:
            raise ValueError("audit: 1 candidate ranks nothing; audit at least 2 of the scored candidates (0: off)")
        if self.audit > self.top_k:
            raise ValueError(f"audit: {self.audit} is more than top_k = {self.top_k}, the candidates given the "
                             f"full score; lower audit or raise top_k")
        return self

    def _speed_target(self) -> bool:
        return self.target_decode_ms is not None or self.target_prefill_tokens_per_s is not None

    @model_validator(mode="after")
    def _targets(self) -> PruneConfig:
        """The method's target keys (engine.stages.prune_methods): a search's keys refused first in any other
        prune, then the method's own checks, then the other methods' keys it does not take."""
        m = method_of(self.method)
        if not m.searches:
            self._refuse_targets([o for o in METHODS if o.searches])
        if m.searches:
            self._search_targets()
        elif m.layers_only:
            self._depth_targets()
        else:
            self._width_targets(m)
        self._refuse_targets(METHODS)
        return self

    def _refuse_targets(self, others: list[PruneMethod] | tuple[PruneMethod, ...]) -> None:
        """The first set target key of `others` that this prune's method neither owns nor takes."""
        m = method_of(self.method)
        for o in others:
            set_keys = [k for k in o.targets if k not in m.targets + m.accepts and getattr(self, k) is not None]
            if set_keys:
                raise ValueError(f"{set_keys[0]}: a {o.name} key in a {self.method} prune; use method = \"{o.name}\"")

    def _search_targets(self) -> None:
        if (self.target_params is None) == (self.target_memory_gb is None):
            raise ValueError("target_params: a search needs exactly one of target_params or target_memory_gb"
                             + (" (a speed target narrows it)" if self._speed_target() else ""))
        how = [k for k in SPEED_KEYS[2:] if getattr(self, k) is not None]
        if how and not self._speed_target():
            raise ValueError(f"{how[0]}: says how a speed target is measured, and there is none; add "
                             "target_decode_ms or target_prefill_tokens_per_s, or leave it out")
        if self.target_params is not None:
            from engine.config.counts import parse_param_count

            parse_param_count(self.target_params)  # ValueError with the accepted forms
        if not self.axes or len(set(self.axes)) != len(self.axes):
            raise ValueError("axes: name each searched axis once, e.g. [\"num_layers\", \"hidden_size\"]")
        fixed = [k for k in WIDTH.targets + DEPTH.targets if getattr(self, k) is not None]
        if fixed:
            raise ValueError(f"{fixed[0]}: a search chooses the shape itself; leave {fixed[0]} out and "
                             "name the axes it may change in axes")

    def _depth_targets(self) -> None:
        if (self.drop_layers is None) == (self.num_layers is None):
            raise ValueError("drop_layers: a depth prune needs exactly one of drop_layers or num_layers")
        if self.drop_layers is not None:
            if not self.drop_layers:
                raise ValueError("drop_layers: the list is empty; name the layers to drop (0-indexed)")
            if min(self.drop_layers) < 0:
                raise ValueError("drop_layers: layer indices are 0-indexed and cannot be negative")
            if len(set(self.drop_layers)) != len(self.drop_layers):
                raise ValueError("drop_layers: a layer is listed twice")

    def _width_targets(self, m: PruneMethod) -> None:
        if all(getattr(self, k) is None for k in m.targets):
            raise ValueError(f"{m.targets[0]}: a width prune needs at least one of " + ", ".join(m.targets))
        if self.drop_layers is not None:  # num_layers is welcome: depth and width in one student
            raise ValueError("drop_layers: a width prune drops layers by num_layers and selection; "
                             "use num_layers, or method = \"depth\"")
