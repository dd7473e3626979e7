"""The experiment schema: one pydantic model per TOML section, with the checks that need no files.

This module imports neither torch nor transformers (the TUI validates as the user types).

What every section shares (strict types, no unknown keys, safe names) is engine/config/section_base.py;
the [[prune]] section, the largest, is engine/config/prune_schema.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from engine.config.arch import SUPPORTED_MODEL_TYPES, check_arch
from engine.config.prune_schema import KD_SCORE_STEPS, PruneConfig
from engine.config.section_base import Dtype, Section, slug
from engine.errors import ConfigError
from engine.stages import KINDS, stage_names, stage_settings


class ModelConfig(Section):
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


class DataConfig(Section):
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
INT8_BLOCK = 256  # optimizer_states = "int8": values sharing one fp32 scale (engine/training/int8_moments.py)
# Bytes per parameter for both Adam moments, by optimizer_states (int8: a code each plus the blocks' scales)
STATE_BYTES = {"float32": 8.0, "bfloat16": 4.0, "int8": 2 * (1 + 4 / INT8_BLOCK)}


def checkpointed_layers(setting: bool | float, num_layers: int) -> int:
    """How many decoder layers `gradient_checkpointing` recomputes: all (true), none (false), or the fraction
    rounded to the nearest layer, at least one."""
    if setting is True:
        return num_layers
    if not setting:
        return 0
    return min(num_layers, max(1, round(setting * num_layers)))


class TrainConfig(Section):
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
    # recompute activations in backward: true (every decoder layer), or a fraction of the layers (the first
    # ones; the rest keep their activations): less recompute where memory allows (checkpointed_layers)
    gradient_checkpointing: bool | float = False
    compile: bool = False  # torch.compile the model(s)
    # bf16 parameters (the masters rounded stochastically) + fp32 master weights in the optimizer (CUDA, bf16),
    # where gradients never add up in bf16 (engine/training/step.py: master_weights_apply); false: fp32
    # parameters under bf16 autocast;
    # "stochastic": there, bf16 parameters without the fp32 copy (4 bytes per parameter less), updated with
    # stochastic rounding (engine/training/master_adamw.py); elsewhere as true. Not under FSDP
    master_weights: bool | Literal["stochastic"] = True
    # Adam moments' dtype; bfloat16 halves them: 8 -> 4 bytes per parameter (engine/training/
    # master_adamw.py: the update computes in fp32, the moments are stored rounded to nearest); "int8":
    # torchao's block-wise 8-bit moments, 2.03 bytes (engine/training/int8_moments.py; the [int8] extra)
    optimizer_states: Literal["float32", "bfloat16", "int8"] = "float32"
    # "liger": Liger-Kernel's Triton RMSNorm, SwiGLU and RoPE in student and teacher (CUDA; the [liger]
    # extra; engine/models/liger.py); "torch": transformers' own modules
    kernels: Literal["torch", "liger"] = "torch"
    # the decoder layers' matmuls in float8 (torchao's float8 training, one dynamic scale per tensor) in
    # student and teacher: Ada/Hopper GPUs (engine/models/float8.py; the [float8] extra)
    float8: bool = False
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

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _checkpointing(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return v
        if not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"{json.dumps(v)} is neither true/false nor a fraction of the layers in (0, 1]; "
                             "write true, false or e.g. 0.5")
        return float(v)

    @field_validator("master_weights", mode="before")
    @classmethod
    def _master_weights(cls, v: Any) -> Any:
        if isinstance(v, bool) or v == "stochastic":
            return v
        raise ValueError(f'{json.dumps(v)} is neither true/false nor "stochastic"; write one of them')

    @field_validator("kernels", "optimizer_states", "float8")
    @classmethod
    def _optional_package(cls, v: Any, info: ValidationInfo) -> Any:
        """A setting that needs an optional package: that package, as the file is read (its metadata only:
        no import of it or of torch)."""
        from engine.config.extras import TORCHAO, TORCHAO_FLOAT8
        from engine.config.liger_install import install_problem

        needs = {"kernels": ("liger", install_problem), "optimizer_states": ("int8", TORCHAO.install_problem),
                 "float8": (True, TORCHAO_FLOAT8.install_problem)}
        value, problem = needs[info.field_name]
        if v == value and (line := problem()):
            raise ValueError(line)
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
    # "cached": the teacher's top_k logits of the training windows are computed once, before the student is
    # built, and read back (engine/distill/teacher_topk.py): the teacher is off the GPU while the student
    # trains, and students over the same windows share them. The same loss as "live" with top_k: not hashed
    teacher_logits: Literal["live", "cached"] = "live"

    @model_validator(mode="after")
    def _cached_logits(self) -> DistillConfig:
        problem = cached_logits_problem(self)
        if problem:
            raise ValueError(problem)
        return self


def cached_logits_problem(cfg: DistillConfig) -> str | None:
    """Why teacher_logits = "cached" cannot serve these settings (None: it can, or it is not asked for)."""
    if cfg.teacher_logits != "cached":
        return None
    if cfg.loss == "ce" or cfg.kd_weight == 0:
        return 'teacher_logits = "cached": this loss reads no teacher; remove teacher_logits'
    if cfg.top_k is None:
        return ('teacher_logits = "cached" stores the teacher\'s top_k logits of each position: set top_k '
                '(e.g. 64), or teacher_logits = "live"')
    if cfg.hidden_weight > 0:
        return ('teacher_logits = "cached" keeps logits only, and hidden_weight needs the teacher\'s hidden '
                'states: set hidden_weight = 0 or teacher_logits = "live"')
    if cfg.share_teacher:
        return ('teacher_logits = "cached" and share_teacher both share the teacher between students; '
                'choose one')
    return None


# [distill] keys about how the students run, the same for all of them: not in a student's own
# `distill = {...}`, and not in the stages' hashes (the results do not depend on them).
NOT_PER_STUDENT = {"share_teacher", "teacher_cuda_graph"}
NOT_HASHED = {"share_teacher", "teacher_cuda_graph", "teacher_logits"}
# trainer keys that change neither a stage's results nor its resume: not hashed in any training section
TRAIN_NOT_HASHED = {"keep_checkpoints", "fail_on_divergence"}


class EvalConfig(Section):
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


class LaunchConfig(Section):
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


class Experiment(Section):
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
        return slug(v, "run name")

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
            # FSDP2 shards torch's AdamW over fp32 weights: fp32 moments, no bf16 weights to round
            for states in ("bfloat16", "int8"):
                self._refuse_under_fsdp("optimizer_states", states, "FSDP keeps fp32 Adam moments",
                                        "optimizer_states = \"float32\"")
            self._refuse_under_fsdp("master_weights", "stochastic", "FSDP keeps fp32 weight shards",
                                    "master_weights = true")
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
            if p.score == "distill-kd" and not p.score_task and self.distill is not None:
                self._kd_score_steps(p, self.distill_for(p.name).steps)
        return self

    @staticmethod
    def _kd_score_steps(p: PruneConfig, steps: int) -> None:
        """"distill-kd" scores the first steps of the student's own [distill] run: KD_SCORE_STEPS of them unless
        set (at most the run's `steps`), and never more than the run has."""
        if "score_steps" not in p.model_fields_set:
            p.score_steps = min(KD_SCORE_STEPS, steps)
        elif p.score_steps > steps:
            raise ValueError(f"prune '{p.name}': score_steps = {p.score_steps} is more than the {steps} steps of its "
                             f"[distill] run, whose first steps score = \"distill-kd\" takes; set score_steps <= "
                             f"{steps}")

    def _refuse_under_fsdp(self, key: str, value: str, why: str, fix: str) -> None:
        """A training key's value that FSDP2 cannot honour, wherever it is set: one line naming where."""
        sections = {"[finetune]": self.finetune, "[distill]": self.distill}
        where = [name for name, cfg in sections.items() if cfg is not None and getattr(cfg, key) == value]
        where += [f"prune '{p.name}' distill" for p in self.prune if p.distill and p.distill.get(key) == value]
        if where:
            raise ValueError(f"{key}: \"{value}\" in {where[0]} is not available under [launch] strategy = "
                             f"\"fsdp\" ({why}); set {fix} or strategy = \"ddp\"")

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
