"""The training stages' bodies: `finetune` (next-token loss) and `distill-<name>` (the student learns
from the teacher). Each checks its inputs, says how to build its models (`Models`: student,
teacher, tokenizer, loss) and hands them to the training recipe (engine/training/loop.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from engine.config import DistillConfig, Experiment
from engine.contract import tokenizer_source
from engine.contract.stage_context import StageContext, has_checkpoint, teacher_checkpoint
from engine.distill.losses import LossSpec
from engine.distill.objective import HiddenSpec, decoder_layers, default_layer_map, output_weight
from engine.errors import UserError
from engine.stages import PRUNE, stage_student
from engine.training.loop import Models, run_training

# Tokens per chunk of the fused next-token loss when fine-tuning ([distill].chunk_tokens for KD).
CE_CHUNK_TOKENS = 2048


def finetune_stage(ctx: StageContext) -> None:
    exp = ctx.exp
    cfg = exp.finetune
    if cfg is None:
        raise UserError(f"{exp.source}: no [finetune] section")

    def build(cuda: bool, meta: dict[str, Any]) -> Models:
        from engine.models.hf import build_scratch_model, load_model, load_tokenizer

        tokenizer = load_tokenizer(tokenizer_source(exp, ctx.layout))
        dtype = train_dtype(exp, cuda)
        if exp.model.init == "scratch":
            vocab = max(int(meta["vocab_size"]), len(tokenizer))
            model = build_scratch_model(exp.model.arch, vocab, dtype, exp.model.attn_implementation,
                                        seed=exp.seed, bos_token_id=meta.get("bos_token_id"),
                                        eos_token_id=meta.get("eos_token_id"))
        else:
            model = load_model(exp.model.path, dtype, exp.model.attn_implementation)
        _check_vocab(model, meta, "finetune")
        _kernels(ctx, model, cfg.kernels, cuda, "model")
        spec = LossSpec("ce", chunk_tokens=CE_CHUNK_TOKENS)
        return Models(model, None, tokenizer, spec, None, exp.model.dtype)

    run_training(ctx, cfg, "finetune", build)


def distill_stage(ctx: StageContext) -> None:
    cfg, build, load_teacher = _distill_setup(ctx)
    cached = cfg.teacher_logits == "cached"  # the teacher is then loaded only if its stored logits lack windows
    run_training(ctx, cfg, "distill", lambda cuda, meta: build(cuda, meta, None if cached else load_teacher(cuda)))


def distill_stages(ctxs: list[StageContext]) -> dict[str, BaseException | None]:
    """Several distill stages in one process over one teacher forward ([distill] share_teacher);
    each stage's outcome (engine/training/shared_recipe.py)."""
    from engine.training.shared_recipe import run_shared_training

    setups = [_distill_setup(ctx) for ctx in ctxs]
    return run_shared_training(ctxs, [cfg for cfg, _, _ in setups], "distill", [b for _, b, _ in setups],
                               setups[0][2])


def _distill_setup(ctx: StageContext) -> tuple[DistillConfig,
                                               Callable[[bool, dict[str, Any], nn.Module | None], Models],
                                               Callable[[bool], nn.Module]]:
    """The stage's [distill] config, how to build its Models over a teacher model (None: the teacher is loaded
    later, if at all, for teacher_logits = "cached"), how to load the teacher."""
    exp, layout = ctx.exp, ctx.layout
    if exp.distill is None:
        raise UserError(f"{exp.source}: no [distill] section")
    name = stage_student(ctx.stage)
    cfg: DistillConfig = exp.distill_for(name)  # [distill] with this student's own overrides
    student_dir = PRUNE.model_dir(layout, name)
    if not has_checkpoint(student_dir):
        raise UserError(f"{ctx.stage}: no student at {student_dir}; run the prune-{name} stage first")
    teacher_dir = teacher_checkpoint(ctx)

    def load_teacher(cuda: bool) -> nn.Module:
        from engine.models.hf import load_model

        teacher = load_model(teacher_dir, exp.model.dtype if cuda else "float32", exp.model.attn_implementation)
        _kernels(ctx, teacher, cfg.kernels, cuda, "teacher")
        return teacher

    def build(cuda: bool, meta: dict[str, Any], teacher: nn.Module | None) -> Models:
        from engine.models.hf import load_config, load_model

        tokenizer = check_same_tokenizer(str(student_dir), teacher_dir, tokenizer_source(exp, layout))
        student = load_model(str(student_dir), train_dtype(exp, cuda), exp.model.attn_implementation)
        _check_vocab(student, meta, f"{ctx.stage} student")
        teacher_rows = output_weight(teacher).shape[0] if teacher is not None else load_config(teacher_dir).vocab_size
        _check_vocab_rows(teacher_rows, meta, f"{ctx.stage} teacher")
        _kernels(ctx, student, cfg.kernels, cuda, "student")
        vocab = min(len(tokenizer), output_weight(student).shape[0], teacher_rows)
        spec = loss_spec(cfg, vocab)
        hidden = hidden_spec(cfg, student, teacher, ctx.stage) if teacher is not None else None
        return Models(student, teacher, tokenizer, spec, hidden, exp.model.dtype, teacher_path=teacher_dir,
                      load_teacher=lambda: load_teacher(cuda))

    return cfg, build, load_teacher


def _kernels(ctx: StageContext, model: nn.Module, kernels: str, cuda: bool, what: str) -> None:
    """[finetune|distill].kernels into the model (engine/models/liger.py); says so in the log."""
    from engine.models.liger import apply_kernels

    if apply_kernels(model, kernels, cuda, what):
        ctx.log(f"[{ctx.stage}] {what}: Liger RMSNorm, SwiGLU and RoPE kernels (kernels = \"liger\")")


def train_dtype(exp: Experiment, cuda: bool) -> str:
    """fp32 master weights under mixed precision (and on the CPU); else [model].dtype."""
    if not cuda or exp.launch.mixed_precision != "no":
        return "float32"
    return exp.model.dtype


def _check_vocab(model: nn.Module, meta: dict[str, Any], what: str) -> None:
    _check_vocab_rows(output_weight(model).shape[0], meta, what)


def _check_vocab_rows(rows: int, meta: dict[str, Any], what: str) -> None:
    if int(meta["vocab_size"]) > rows:
        raise UserError(f"{what}: the prepared data uses token ids up to {meta['vocab_size'] - 1} but the "
                        f"model's vocabulary has {rows} rows; prepare the data with the model's tokenizer")


def loss_spec(cfg: DistillConfig, vocab: int | None) -> LossSpec:
    return LossSpec(kind=cfg.loss, temperature=cfg.temperature, top_k=cfg.top_k, kd_weight=cfg.kd_weight,
                    ce_weight=cfg.ce_weight, vocab=vocab, chunk_tokens=cfg.chunk_tokens)


def hidden_spec(cfg: DistillConfig, student: nn.Module, teacher: nn.Module, stage: str) -> HiddenSpec | None:
    if cfg.hidden_weight <= 0:
        return None
    ns, nt = len(decoder_layers(student)), len(decoder_layers(teacher))
    pairs = tuple((int(s), int(t)) for s, t in cfg.layer_map) if cfg.layer_map else default_layer_map(ns, nt)
    for s, t in pairs:
        if not (0 <= s < ns and 0 <= t < nt):
            raise UserError(f"distill.layer_map: [{s}, {t}] is out of range for {stage} (student layers "
                            f"0..{ns - 1}, teacher layers 0..{nt - 1}); fix the pair")
    return HiddenSpec(cfg.hidden_weight, cfg.hidden_loss, pairs)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the token -> id map (what must match for logits to be comparable)."""
    import hashlib
    import json

    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def check_same_tokenizer(student_dir: str, teacher_dir: str, fallback: str) -> Any:
    """The shared tokenizer; a UserError when the student's and the teacher's differ."""
    from engine.models.hf import load_tokenizer

    def has_tokenizer(d: str) -> bool:
        p = Path(d)
        return p.is_dir() and any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json",
                                                              "tokenizer.model", "vocab.json"))

    ref = load_tokenizer(fallback)
    for who, d in (("student", student_dir), ("teacher", teacher_dir)):
        if has_tokenizer(d):
            tok = load_tokenizer(d)
            if tokenizer_fingerprint(tok) != tokenizer_fingerprint(ref):
                raise UserError(f"the {who} at {d} uses a different tokenizer than {fallback}: distillation "
                                "compares token distributions, so teacher and student must share one; "
                                "prune the student from this teacher (or set model.tokenizer)")
    return ref
