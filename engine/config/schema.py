"""The experiment schema: one pydantic model per TOML section, with the checks that need no files.

This module imports neither torch nor transformers (the TUI validates as the user types).

Over 450 lines, kept whole for now: the sections' models cross-reference each other (Experiment checks
[[prune]] against [distill] and [launch]), and the next split, [[prune]]'s validators into a module of
their own, was left for a session in which nothing else edits this file (issue 22's notes).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.config.arch import SUPPORTED_MODEL_TYPES, check_arch
from engine.errors import ConfigError
from engine.stages import KINDS, stage_names, stage_settings

MAX_NAME = 100  # characters of a run or student name


def _slug(value: str, what: str) -> str:
    """Names become directory names (stages, runs): keep them to safe characters."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise ValueError(f"'{value}' is not a valid {what}; use letters, digits, '-', '_' or '.'")
    if len(value) > MAX_NAME:  # file names stop at 255 bytes; stages add a prefix ("distill-")
        raise ValueError(f"'{value[:20]}...' is {len(value)} characters long; keep a {what} to "
                         f"{MAX_NAME} characters at most")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        """TOML's true/false are not numbers, though pydantic takes `steps = true` as 1 step; nor are
        strings numbers or booleans, though pydantic takes `lr = "0.001"` and `compile = "yes"`: strict
        everywhere, as `arch` is."""
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if field is None:
                    continue
                if _holds_bool(value) and _numbers_only(field.annotation):
                    raise ValueError(f"{key}: {json.dumps(value)} is not a number (true and false are "
                                     "booleans); write a number")
                if _holds_number_text(value) and _numbers_only(field.annotation) and not _takes_str(field.annotation):
                    raise ValueError(f"{key}: {json.dumps(value)} is a string, not a number; write it "
                                     "without quotes")
                if _bool_only(field.annotation) and value is not None and not isinstance(value, bool):
                    raise ValueError(f"{key}: {json.dumps(value)} is not a boolean; write true or false")
        return data


def _holds_bool(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(v) for v in value)
    return isinstance(value, bool)


def _holds_number_text(value: Any) -> bool:
    """A string pydantic would read as a number ("128", "1e-3"); other strings it refuses itself."""
    if isinstance(value, (list, tuple)):
        return any(_holds_number_text(v) for v in value)
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _kinds(t: Any) -> set[Any]:
    """A type annotation and everything inside it (unions, Literal values, list items)."""
    return {t}.union(*(_kinds(a) for a in get_args(t)))


def _takes_str(annotation: Any) -> bool:
    """A field that takes some strings: `micro_batch_size = "auto"`, `gpus = "all"`."""
    return any(k is str or k is Any or isinstance(k, str) for k in _kinds(annotation))


def _bool_only(annotation: Any) -> bool:
    return _kinds(annotation) - {type(None)} == {bool}


def _numbers_only(annotation: Any) -> bool:
    """A field whose type holds int or float but neither bool nor Any: `steps`, `layer_map`, `gpus`."""
    def kinds(t: Any) -> set[Any]:
        return {t}.union(*(kinds(a) for a in get_args(t)))

    found = kinds(annotation)
    return bool(found & {int, float}) and not found & {bool, Any}


Dtype = Literal["bfloat16", "float16", "float32"]


class ModelConfig(_Section):
    path: str | None = None  # hub id or local directory
    dtype: Dtype = "bfloat16"
    tokenizer: str | None = None  # default: the model's own
    init: Literal["pretrained", "scratch"] = "pretrained"
    arch: dict[str, Any] | None = None  # transformers config keys for init = "scratch"
    tokenizer_train_vocab: int | None = Field(default=None, ge=256, le=1_000_000)
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"

    @model_validator(mode="after")
    def _source(self) -> ModelConfig:
        if self.init == "pretrained" and not self.path:
            raise ValueError("path: set a hub id or local directory, or init = \"scratch\" with an arch table")
        if self.init == "scratch" and not self.arch:
            raise ValueError("arch: init = \"scratch\" needs an arch table, e.g. arch = {model_type = \"llama\", ...}")
        if self.arch is not None and "model_type" not in self.arch:
            raise ValueError(f"arch.model_type: name the architecture ({', '.join(SUPPORTED_MODEL_TYPES)})")
        if self.arch is not None:
            check_arch(self.arch)
        if self.init == "scratch" and not (self.tokenizer or self.tokenizer_train_vocab or self.path):
            raise ValueError("tokenizer: a scratch model needs `tokenizer = \"...\"` or `tokenizer_train_vocab = N`")
        return self


class DataConfig(_Section):
    dataset: str | None = None  # hub dataset name | "builtin:stdlib-docs"
    config: str | None = None  # hub dataset config name
    train_files: list[str] = Field(default_factory=list)
    validation_files: list[str] = Field(default_factory=list)
    test_files: list[str] = Field(default_factory=list)
    text_field: str = "text"
    seq_length: int = Field(default=2048, ge=8, le=1_048_576)
    workers: int = Field(default=4, ge=1, le=512)
    validation_fraction: float = Field(default=0.01, gt=0.0, lt=0.5)  # held out when no validation split
    test_fraction: float = Field(default=0.0, ge=0.0, lt=0.5)  # held out when no test split
    max_tokens: int | None = Field(default=None, ge=1)  # cap the training tokens (demos)
    seed: int = Field(default=1234, ge=0, le=2**32 - 1)  # numpy's seeds are 32-bit, none negative
    prepared: str | None = None  # a folder another prepare wrote (meta.json + <split>.bin): used as is

    @model_validator(mode="after")
    def _source(self) -> DataConfig:
        if not self.dataset and not self.train_files and not self.prepared:
            raise ValueError("dataset: set a hub dataset, \"builtin:stdlib-docs\", or train_files = [...]")
        if self.dataset and self.train_files:
            raise ValueError("train_files: give either dataset or train_files, not both")
        if self.prepared and (self.dataset or self.train_files or self.validation_files or self.test_files):
            raise ValueError("prepared: a prepared folder replaces dataset and *_files; give one or the other")
        return self


# Above this adam_beta2, a bf16 second moment multiplied by it can round back to itself (the decay is
# below half a bf16 step, 2^-9..2^-8 relative), so it stops forgetting old gradients.
BF16_MAX_BETA2 = 0.99


class TrainConfig(_Section):
    """Trainer keys shared by [finetune] and [distill]."""

    steps: int = Field(default=30, ge=1, le=100_000_000)
    global_batch_size: int = Field(default=128, ge=1)
    # "auto": the largest micro-batch that fits the GPU (engine/training/micro_batch.py); on the CPU
    # the largest divisor of global_batch_size / processes up to 4
    micro_batch_size: int | Literal["auto"] = "auto"
    lr: float = Field(default=1e-4, gt=0.0, le=1.0)
    min_lr: float = Field(default=1e-5, ge=0.0, le=1.0)
    warmup_steps: int = Field(default=2, ge=0)
    weight_decay: float = Field(default=0.1, ge=0.0, le=1.0)  # decoupled (AdamW): lr x wd per step
    adam_beta1: float = Field(default=0.9, gt=0.0, lt=1.0)
    adam_beta2: float = Field(default=0.95, gt=0.0, lt=1.0)
    grad_clip: float = Field(default=1.0, ge=0.0, le=1e6)  # 0 disables clipping
    val_interval: int = Field(default=10, ge=1)
    val_batches: int = Field(default=5, ge=1)
    checkpoint_interval: int = Field(default=100, ge=1)
    # checkpoints kept on disk (the newest; plus the last good one after non-finite steps): the disk
    # holds keep_checkpoints + 1 while one is written (engine/resources/plan.py)
    keep_checkpoints: int = Field(default=1, ge=1, le=1000)
    log_interval: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the model(s)
    # bf16 parameters + fp32 master weights in the optimizer (CUDA, bf16), where gradients never add up
    # in bf16 (engine/training/step.py: master_weights_apply); false: fp32 parameters under bf16 autocast
    master_weights: bool = True
    # Adam moments' dtype; bfloat16 halves them: 8 -> 4 bytes per parameter (engine/training/
    # master_adamw.py: the update computes in fp32, the moments are stored rounded to nearest)
    optimizer_states: Literal["float32", "bfloat16"] = "float32"
    # "liger": Liger-Kernel's Triton RMSNorm, SwiGLU and RoPE in student and teacher (CUDA; the [liger]
    # extra; engine/models/liger.py); "torch": transformers' own modules
    kernels: Literal["torch", "liger"] = "torch"
    max_nan_steps: int = Field(default=5, ge=1)  # consecutive non-finite losses that stop the run
    # a validation loss well above its best at the end (engine/contract/divergence.py) fails the stage
    # and stops the run, instead of a warning on a "succeeded" stage
    fail_on_divergence: bool = False
    seed: int = Field(default=1234, ge=0, le=2**32 - 1)  # numpy's seeds are 32-bit, none negative

    @field_validator("micro_batch_size", mode="before")
    @classmethod
    def _micro(cls, v: Any) -> Any:
        if (isinstance(v, str) and v != "auto") or (isinstance(v, int) and not isinstance(v, bool) and v < 1):
            raise ValueError(f'{json.dumps(v)} is neither a number >= 1 nor "auto"; write one of them')
        return v

    @field_validator("kernels")
    @classmethod
    def _kernels(cls, v: str) -> str:
        if v == "liger":  # the package, at check time (no import of it or of torch)
            from engine.models.liger import install_problem

            problem = install_problem()
            if problem:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _schedule(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr: {self.min_lr} is above lr = {self.lr}; set min_lr <= lr")
        if self.optimizer_states == "bfloat16" and self.adam_beta2 > BF16_MAX_BETA2:
            raise ValueError(
                f"adam_beta2: {self.adam_beta2} with optimizer_states = \"bfloat16\": a bf16 second moment "
                f"(8 bits) cannot decay by {1 - self.adam_beta2:.2g} a step; set adam_beta2 <= {BF16_MAX_BETA2} "
                "or optimizer_states = \"float32\"")
        if self.micro_batch_size != "auto" and self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size: {self.global_batch_size} is not a multiple of "
                f"micro_batch_size = {self.micro_batch_size}"
            )
        return self


class FinetuneConfig(TrainConfig):
    pass


class DistillConfig(TrainConfig):
    loss: Literal["forward_kl", "reverse_kl", "jsd", "ce"] = "forward_kl"
    temperature: float = Field(default=1.0, gt=0.0, le=100.0)
    ce_weight: float = Field(default=0.0, ge=0.0, le=1000.0)
    kd_weight: float = Field(default=1.0, ge=0.0, le=1000.0)
    top_k: int | None = Field(default=None, ge=1)  # distill on the teacher's top-k logits only
    hidden_weight: float = Field(default=0.0, ge=0.0, le=1000.0)  # hidden-state loss weight (0: logits only)
    hidden_loss: Literal["cosine", "mse"] = "cosine"
    layer_map: list[tuple[int, int]] | None = None  # [[student_layer, teacher_layer], ...]
    chunk_tokens: int = Field(default=4096, ge=16)  # tokens per chunk of the fused KD loss
    # all students in one process over one teacher forward per micro-batch (engine/orchestration/
    # teacher_groups.py); how the stages run, not what they compute: not hashed (see stage_hash)
    share_teacher: bool = False
    # replay the teacher's forward as a CUDA graph (engine/distill/teacher_graph.py): the same kernels
    # with one launch, for small models whose steps wait on the host; CUDA, not under FSDP
    teacher_cuda_graph: bool = False


# [distill] keys about how the students run, the same for all of them: not in a student's own
# `distill = {...}`, and not in the stages' hashes (the results do not depend on them).
NOT_PER_STUDENT = {"share_teacher", "teacher_cuda_graph"}
NOT_HASHED = {"share_teacher", "teacher_cuda_graph"}
# trainer keys that change neither a stage's results nor its resume: not hashed in any training section
TRAIN_NOT_HASHED = {"keep_checkpoints", "fail_on_divergence"}


SearchAxis = Literal["num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_key_value_heads"]


# a search's speed budget: the targets, then how they are measured (engine/search/speed_budget.py)
SPEED_KEYS = ("target_decode_ms", "target_prefill_tokens_per_s", "speed_batch_size", "speed_prompt_tokens",
              "speed_new_tokens", "speed_fit_shapes")


class PruneConfig(_Section):
    name: str
    method: Literal["depth", "width", "search"]
    # depth (width and search drop layers too, chosen by the same selection)
    drop_layers: list[int] | None = None
    num_layers: int | None = Field(default=None, ge=1)
    # None: block-influence for depth, lm-loss for width and search (engine.shapes.shape.layer_selection)
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
    score: Literal["loss", "distill"] = "loss"
    score_steps: int = Field(default=20, ge=1)  # score = "distill": steps of the short distillation
    score_task: str | None = None  # an [eval] task scored instead of the loss
    audit: int = Field(default=0, ge=0)  # after the search: the N best-scored distilled in full (search/audit.py)
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
        return _slug(v, "name")

    @model_validator(mode="after")
    def _audit(self) -> PruneConfig:
        """audit: a search's ranking checked by distilling its best candidates; N of the scored ones, N >= 2."""
        if "audit" not in self.model_fields_set or not self.audit:
            return self
        if self.method != "search":
            raise ValueError(f"audit: a search key in a {self.method} prune; use method = \"search\"")
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
        width_keys = ("ffn_hidden_size", "hidden_size", "num_attention_heads", "num_key_value_heads")
        search_keys = ("target_params", "target_memory_gb", "memory_seq_length", "score_task") + SPEED_KEYS
        if self.method != "search":
            set_search = [k for k in search_keys if getattr(self, k) is not None]
            if set_search:
                raise ValueError(f"{set_search[0]}: a search key in a {self.method} prune; use method = \"search\"")
        if self.method == "search":
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
            fixed = [k for k in width_keys + ("drop_layers", "num_layers") if getattr(self, k) is not None]
            if fixed:
                raise ValueError(f"{fixed[0]}: a search chooses the shape itself; leave {fixed[0]} out and "
                                 "name the axes it may change in axes")
        elif self.method == "depth":
            if (self.drop_layers is None) == (self.num_layers is None):
                raise ValueError("drop_layers: a depth prune needs exactly one of drop_layers or num_layers")
            if self.drop_layers is not None:
                if not self.drop_layers:
                    raise ValueError("drop_layers: the list is empty; name the layers to drop (0-indexed)")
                if min(self.drop_layers) < 0:
                    raise ValueError("drop_layers: layer indices are 0-indexed and cannot be negative")
                if len(set(self.drop_layers)) != len(self.drop_layers):
                    raise ValueError("drop_layers: a layer is listed twice")
            set_width = [k for k in width_keys if getattr(self, k) is not None]
            if set_width:
                raise ValueError(f"{set_width[0]}: a width key in a depth prune; use method = \"width\"")
        else:
            if all(getattr(self, k) is None for k in width_keys):
                raise ValueError("ffn_hidden_size: a width prune needs at least one of " + ", ".join(width_keys))
            if self.drop_layers is not None:  # num_layers is welcome: depth and width in one student
                raise ValueError("drop_layers: a width prune drops layers by num_layers and selection; "
                                 "use num_layers, or method = \"depth\"")
        return self


class EvalConfig(_Section):
    splits: list[Literal["train", "validation", "test"]] = Field(default_factory=lambda: ["validation", "test"])
    batches: int | None = Field(default=50, ge=1)  # per split; None = the whole split
    micro_batch_size: int = Field(default=4, ge=1)
    # downstream tasks through lm-evaluation-harness (the [eval] extra): task names or YAML files/folders
    tasks: list[str] = Field(default_factory=list)
    num_fewshot: int = Field(default=0, ge=0)
    limit: int | None = Field(default=None, ge=1)  # examples per task; None = all
    task_batch_size: int = Field(default=8, ge=1)
    # inference speed; None = the device's default ([1, 16], 512, 128 on a GPU; [1, 4], 64, 16 on the CPU)
    speed: bool = True
    speed_batch_sizes: list[int] | None = None
    speed_prompt_tokens: int | None = Field(default=None, ge=1)
    speed_new_tokens: int | None = Field(default=None, ge=2)
    speed_repeats: int = Field(default=3, ge=1)
    speed_max_spread: float = Field(default=0.05, gt=0)  # go on timing until (Q3 - Q1) / median is this small
    speed_max_seconds: float = Field(default=30.0, gt=0)  # ... or this long has passed (after speed_repeats)
    # greedy samples; None = the starts of 3 validation documents, [] = no samples
    prompts: list[str] | None = None
    max_new_tokens: int = Field(default=48, ge=1)

    @field_validator("speed_batch_sizes")
    @classmethod
    def _batch_sizes(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(b < 1 for b in v)):
            raise ValueError("give one or more batch sizes of 1 or more, e.g. [1, 16]")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        if any(not t.strip() for t in v) or len(set(v)) != len(v):
            raise ValueError("give distinct, non-empty lm-eval task names or task YAML paths")
        return v


class LaunchConfig(_Section):
    gpus: Union[Literal["all"], list[int]] = "all"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    parallel: bool = False  # distill students at once on disjoint GPU sets
    nodes: int = Field(default=1, ge=1)
    machine_rank: int = Field(default=0, ge=0)
    main_process_ip: str | None = None
    main_process_port: int = Field(default=29500, ge=1, le=65535)
    mixed_precision: Literal["bf16", "fp16", "no"] = "bf16"
    stage_gpus: dict[str, list[int]] = Field(default_factory=dict)  # per-stage override, e.g. {"distill-width" = [2, 3]}

    @model_validator(mode="after")
    def _nodes(self) -> LaunchConfig:
        if self.nodes > 1 and not self.main_process_ip:
            raise ValueError("main_process_ip: nodes > 1 needs the address of node 0 (or use `run --slurm`)")
        if self.machine_rank >= self.nodes:
            raise ValueError(f"machine_rank: {self.machine_rank} must be below nodes = {self.nodes}")
        return self


class Experiment(_Section):
    name: str
    runs_dir: str = "runs"
    seed: int = Field(default=1234, ge=0, le=2**32 - 1)  # numpy's seeds are 32-bit, none negative
    model: ModelConfig
    data: DataConfig
    finetune: FinetuneConfig | None = None
    prune: list[PruneConfig] = Field(default_factory=list)
    distill: DistillConfig | None = None
    eval: EvalConfig | None = None
    launch: LaunchConfig = Field(default_factory=LaunchConfig)

    # Where the file came from (set by load_experiment; not part of the schema).
    source: str | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _slug(v, "run name")

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        names = [p.name for p in self.prune]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"prune: two [[prune]] tables are named '{sorted(dup)[0]}'; give each a unique name")
        if self.model.init == "scratch" and self.finetune is None:
            raise ValueError("finetune: init = \"scratch\" needs a [finetune] section to train the teacher")
        if self.distill is not None and not self.prune:
            raise ValueError("distill: [distill] needs at least one [[prune]] student")
        if self.launch.strategy == "fsdp":
            self._no_bf16_states_under_fsdp()
        for p in self.prune:
            if p.audit and self.distill is None:
                raise ValueError(f"audit: prune '{p.name}' audits its search with the [distill] recipe, and there "
                                 "is no [distill]; add one or set audit = 0")
            if p.distill and NOT_PER_STUDENT & p.distill.keys():
                key = sorted(NOT_PER_STUDENT & p.distill.keys())[0]
                raise ValueError(f"prune '{p.name}': distill.{key} is set for all students at once; "
                                 "move it to [distill]")
            if p.distill and self.distill is None:
                raise ValueError(f"distill: prune '{p.name}' overrides [distill] keys but there is no [distill]")
            if p.distill:
                try:
                    self.distill_for(p.name)
                except ValidationError as e:
                    err = e.errors()[0]
                    key = ".".join(str(x) for x in err["loc"])
                    raise ValueError(f"prune '{p.name}': distill.{key}: {err['msg'].lower()}") from None
        return self

    def _no_bf16_states_under_fsdp(self) -> None:
        """FSDP2 shards torch's AdamW, whose moments are fp32: bf16 ones are not offered there."""
        where = []
        if self.finetune is not None and self.finetune.optimizer_states == "bfloat16":
            where.append("[finetune]")
        if self.distill is not None and self.distill.optimizer_states == "bfloat16":
            where.append("[distill]")
        where += [f"prune '{p.name}' distill" for p in self.prune
                  if p.distill and p.distill.get("optimizer_states") == "bfloat16"]
        if where:
            raise ValueError(f"optimizer_states: \"bfloat16\" in {where[0]} is not available under [launch] "
                             "strategy = \"fsdp\" (FSDP keeps fp32 Adam moments); set optimizer_states = "
                             "\"float32\" or strategy = \"ddp\"")

    def distill_for(self, name: str) -> DistillConfig:
        """[distill] with the student's own overrides (`[[prune]] distill = {...}`) applied."""
        if self.distill is None:
            raise ConfigError(f"{self.source or 'experiment'}: no [distill] section")
        overrides = self.prune_by_name(name).distill or {}
        return DistillConfig.model_validate({**self.distill.model_dump(), **overrides})

    # ---- the stage plan -------------------------------------------------------------
    def stages(self) -> list[str]:
        """Stage names in pipeline order."""
        sections = {k.section: getattr(self, k.section) for k in KINDS if k.section is not None}
        return stage_names(sections, [p.name for p in self.prune])

    def prune_by_name(self, name: str) -> PruneConfig:
        for p in self.prune:
            if p.name == name:
                return p
        raise ConfigError(f"{self.source or 'experiment'}: no [[prune]] named '{name}'")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_toml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def stage_hash(self, stage: str) -> str:
        """Hash of the keys a stage depends on (its own and its inputs'), for caching.

        Keys left at their defaults are not hashed, so a new schema key with a default does not
        invalidate finished stages of existing runs.
        """
        def dump(m: BaseModel | None) -> Any:
            if m is None:
                return None
            return m.model_dump(mode="json", exclude_defaults=True,
                                exclude=(NOT_HASHED | TRAIN_NOT_HASHED if isinstance(m, DistillConfig)
                                         else TRAIN_NOT_HASHED if isinstance(m, TrainConfig) else None))

        parts: dict[str, Any] = {"model": dump(self.model), "data": dump(self.data), "seed": self.seed}
        for section, value in stage_settings(self, stage).items():  # the kind's rule (engine.stages.sections)
            parts[section] = [dump(v) for v in value] if isinstance(value, list) else dump(value)
        blob = json.dumps({"stage": stage, **parts}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
