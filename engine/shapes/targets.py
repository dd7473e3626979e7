"""The teacher's config without its weights, and every [[prune]] target checked against it.

Used by `check` (through engine.orchestration.check) and the TUI, so no torch and no transformers here.
The teacher config comes from, in order: the arch table (init = "scratch"), a local
config.json, the local Hugging Face cache, or a small built-in table of well-known hub models
(so that the shipped recipes check offline). When none has it, targets are checked by the
prune stage when it loads the model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.config import ConfigError, Experiment
from engine.config.shape import (
    Shape,
    StudentShape,
    count_non_embedding_params,
    count_params,
    layer_selection,
    selection_cost,
    shape_from_config,
    student_shape,
)
from engine.contract import RunLayout, human_count, read_json
from engine.shapes.candidates import CHECK_SHOWN, SearchSpace, candidate_label, evenly_spaced, search_space
from engine.stages import PREPARE, method_of
from engine.stages.prune import earlier_student

_LLAMA3_8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                  tie_word_embeddings=False, rope_theta=500000.0, max_position_embeddings=131072,
                  rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001)

# Shapes of well-known hub checkpoints (their config.json, shape keys only).
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B": _LLAMA3_8B,
    "meta-llama/Llama-3.1-8B-Instruct": {**_LLAMA3_8B, "eos_token_id": [128001, 128008, 128009]},
    "meta-llama/Meta-Llama-3-8B": {**_LLAMA3_8B, "max_position_embeddings": 8192},
    "meta-llama/Llama-3.2-1B": dict(model_type="llama", vocab_size=128256, hidden_size=2048,
                                    intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                                    num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "meta-llama/Llama-3.2-3B": dict(model_type="llama", vocab_size=128256, hidden_size=3072,
                                    intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                                    num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "mistralai/Mistral-7B-v0.3": dict(model_type="mistral", vocab_size=32768, hidden_size=4096,
                                      intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "Qwen/Qwen2.5-0.5B": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                              num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                              tie_word_embeddings=True),
    "Qwen/Qwen2.5-1.5B": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                              num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                              tie_word_embeddings=True),
    "Qwen/Qwen2.5-7B": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                            num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                            tie_word_embeddings=False),
    "Qwen/Qwen3-0.6B": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                            num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                            tie_word_embeddings=True),
    "Qwen/Qwen3-1.7B": dict(model_type="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                            num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                            tie_word_embeddings=True),
    "Qwen/Qwen3-4B": dict(model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                          num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                          tie_word_embeddings=True),
    "Qwen/Qwen3-8B": dict(model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                          num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                          tie_word_embeddings=False),
}


@dataclass(frozen=True)
class TeacherConfig:
    config: dict[str, Any]
    origin: str  # where it came from, for the user
    vocab_known: bool = True


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def cached_hub_file(repo_id: str, filename: str) -> Path | None:
    """A file of a hub model in the local HF cache (the snapshot of refs/main first), or None."""
    root = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    snaps = root / "snapshots"
    if not snaps.is_dir():
        return None
    ref = root / "refs" / "main"
    order: list[Path] = []
    if ref.is_file():
        order.append(snaps / ref.read_text().strip())
    order += sorted(p for p in snaps.iterdir() if p.is_dir())
    for snap in order:
        if (snap / filename).is_file():
            return snap / filename
    return None


def _model_config(path: str) -> tuple[dict[str, Any], str] | None:
    local = Path(path).expanduser()
    if local.is_dir():
        cfg = read_json(local / "config.json")
        return (cfg, f"{local / 'config.json'}") if cfg else None
    cached = cached_hub_file(path, "config.json")
    if cached is not None and (cfg := read_json(cached)):
        return cfg, "local Hugging Face cache"
    if path in KNOWN_CONFIGS:
        return dict(KNOWN_CONFIGS[path]), "built-in table of hub configs"
    return None


def tokenizer_vocab_size(path: str) -> int | None:
    """len(tokenizer) from a tokenizer.json (local directory or HF cache), without loading it."""
    local = Path(path).expanduser()
    f = local / "tokenizer.json" if local.is_dir() else cached_hub_file(path, "tokenizer.json")
    doc = read_json(f) if f is not None and f.is_file() else None
    if doc is None:
        return None
    vocab = doc.get("model", {}).get("vocab")
    ids: list[int] = []
    if isinstance(vocab, dict):
        ids += [int(i) for i in vocab.values()]
    elif isinstance(vocab, list):  # unigram: [[piece, score], ...]
        ids.append(len(vocab) - 1)
    ids += [int(t["id"]) for t in doc.get("added_tokens", []) if "id" in t]
    return max(ids) + 1 if ids else None


def _scratch_vocab(exp: Experiment) -> int | None:
    m = exp.model
    if m.arch and m.arch.get("vocab_size"):
        return int(m.arch["vocab_size"])
    meta = read_json(PREPARE.output_file(RunLayout(exp.run_dir), PREPARE.stage()))  # prepare already ran
    if meta and meta.get("vocab_size"):
        return int(meta["vocab_size"])
    if m.tokenizer_train_vocab:
        return int(m.tokenizer_train_vocab)
    return tokenizer_vocab_size(m.tokenizer) if m.tokenizer else None


def teacher_config(exp: Experiment) -> TeacherConfig | None:
    """The teacher's config dict without loading weights, or None when it is not available offline.

    Fine-tuning does not change the architecture, so [model] describes the teacher either way.
    """
    m = exp.model
    if m.init == "scratch":
        assert m.arch is not None
        vocab = _scratch_vocab(exp)
        cfg = dict(m.arch)
        if vocab is not None:
            cfg["vocab_size"] = vocab
        return TeacherConfig(cfg, "model.arch", vocab_known=vocab is not None)
    found = _model_config(str(m.path))
    return TeacherConfig(found[0], found[1]) if found else None


def teacher_shape(exp: Experiment, tc: TeacherConfig) -> Shape:
    where = f"{exp.source}: model.arch" if exp.model.init == "scratch" else f"{exp.source}: model.path"
    try:
        shape = shape_from_config(tc.config, where=where)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: cannot read the model shape ({e})") from None
    return shape if tc.vocab_known else replace(shape, vocab_size=None)


def check_importance_from(exp: Experiment) -> None:
    """importance_from names an earlier [[prune]] of this file, or an existing file/directory."""
    names = [p.name for p in exp.prune]
    for i, p in enumerate(exp.prune):
        src = p.importance_from
        if not src:
            continue
        key = f"{exp.source}: prune[{p.name}].importance_from"
        name = earlier_student(src, names)
        if name is not None:
            if names.index(name) >= i:
                raise ConfigError(f"{key}: '{src}' is not an earlier [[prune]] table; name one listed above "
                                  f"'{p.name}' ({', '.join(names[:i]) or 'none'}) or an importance.json file")
            continue
        path = Path(src).expanduser()
        if not (path.is_file() or (path / "importance.json").is_file()):
            raise ConfigError(f"{key}: '{src}' is neither a [[prune]] name of this file nor an existing "
                              "importance.json (or a directory holding one)")


def student_shapes(exp: Experiment
                   ) -> tuple[TeacherConfig | None, Shape | None, list[StudentShape | SearchSpace]]:
    """Check every [[prune]] target; ConfigError (one line, with the fix) on the first bad one."""
    check_importance_from(exp)
    if not exp.prune and exp.model.init != "scratch":
        return None, None, []
    tc = teacher_config(exp)
    if tc is None:
        _check_importance_files(exp, None)
        return None, None, []
    t = teacher_shape(exp, tc)
    _check_importance_files(exp, t)
    students = [_student(exp, t, p) for p in exp.prune]
    _check_speed_budgets(exp, tc)
    return tc, t, students


def check_speed_lengths(exp: Experiment, device_type: str) -> None:
    """As student_shapes does, at the lengths of the device the run gets ("cuda": the GPU's default
    lengths are longer than the CPU's), so that a GPU run is refused before anything is written."""
    tc = teacher_config(exp)
    if tc is not None:
        _check_speed_budgets(exp, tc, device_type)


def _check_speed_budgets(exp: Experiment, tc: TeacherConfig, device_type: str | None = None) -> None:
    """A search's speed budget at lengths the teacher cannot hold: one line now, not in the prune stage."""
    from engine.config.speed_target import speed_budget_for
    from engine.errors import UserError

    for p in exp.prune:
        budget = speed_budget_for(p, exp.eval) if method_of(p.method).searches else None
        if budget is not None:
            try:
                budget.check_positions(tc.config.get("max_position_embeddings"), f"{exp.source}: prune[{p.name}]",
                                       device_type)
            except UserError as e:
                raise ConfigError(str(e)) from None


def _check_importance_files(exp: Experiment, teacher: Shape | None) -> None:
    """An importance.json named by path is one a prune stage wrote, for this teacher's shape (a junk file,
    or another teacher's, failed only in the prune stage, after the stages before it ran)."""
    from engine.contract import read_json

    names = [p.name for p in exp.prune]
    for p in exp.prune:
        if not p.importance_from or earlier_student(p.importance_from, names) is not None:
            continue
        path = Path(p.importance_from).expanduser()
        path = path / "importance.json" if path.is_dir() else path
        key = f"{exp.source}: prune[{p.name}].importance_from"
        doc = read_json(path)
        model = doc.get("model") if doc else None
        if not isinstance(model, dict) or not isinstance(doc.get("layers"), dict):
            raise ConfigError(f"{key}: {path} is not an importance.json a prune stage wrote; give one, or remove "
                              "importance_from to calibrate")
        if teacher is None:
            continue
        want = {"num_layers": teacher.num_layers, "hidden_size": teacher.hidden_size,
                "intermediate_size": teacher.intermediate_size, "num_attention_heads": teacher.num_heads,
                "num_key_value_heads": teacher.num_kv_heads}
        diff = [f"{k} {model.get(k)} != {v}" for k, v in want.items() if model.get(k) != v]
        if diff:
            raise ConfigError(f"{key}: {path} was computed for another model ({diff[0]}); remove "
                              "importance_from to calibrate on this teacher")


def _student(exp: Experiment, t: Shape, p: Any) -> StudentShape | SearchSpace:
    where = f"{exp.source}: prune[{p.name}]"
    if method_of(p.method).searches:
        if p.distill_scored and exp.distill is None:  # (a score_task scores without distilling)
            raise ConfigError(f"{where}.score: \"{p.score}\" runs a short [distill]; add a [distill] section or "
                              "use score = \"loss\"")
        if p.score_task and p.score_task not in (exp.eval.tasks if exp.eval else []):
            raise ConfigError(f"{where}.score_task: '{p.score_task}' is not one of [eval] tasks; add it to "
                              "[eval] tasks = [...]")
        return search_space(t, p, where, exp.model.dtype, exp.data.seq_length)
    return student_shape(t, p, where)


# ---- the lines `check` prints ------------------------------------------------------------


def _param_text(s: Shape) -> str:
    if s.vocab_size is None:
        n = count_non_embedding_params(s)
        return f"{human_count(n)} params without embeddings (vocab size known after prepare)"
    n = count_params(s)
    return f"{human_count(n)} params ({n:,})"


def _changes(t: Shape, s: Shape) -> str:
    parts = []
    for label, a, b in (("layers", t.num_layers, s.num_layers), ("hidden", t.hidden_size, s.hidden_size),
                        ("ffn", t.intermediate_size, s.intermediate_size), ("heads", t.num_heads, s.num_heads),
                        ("kv", t.num_kv_heads, s.num_kv_heads)):
        if a != b:
            parts.append(f"{label} {a}->{b}")
    return ", ".join(parts) or "no change"


def shape_lines(exp: Experiment) -> list[str]:
    """Teacher and student shapes, parameter counts and shrink factors, for `check`."""
    tc, t, students = student_shapes(exp)
    if not exp.prune:
        return [] if t is None else [f"teacher: {exp.model.arch.get('model_type')}, {t.describe()}: "
                                     f"{_param_text(t)}"]
    if t is None or tc is None:
        return [f"teacher: {exp.model.path}: config not available offline (not a local directory, not in "
                "the Hugging Face cache); prune targets are checked when the prune stage loads it"]
    tied = "tied" if t.tied else "untied"
    vocab = f"vocab {t.vocab_size}" if t.vocab_size else "vocab unknown"
    out = [f"teacher: {t.model_type}, {t.describe()}, {vocab}, {tied} embeddings: {_param_text(t)}  "
           f"[{tc.origin}]", "students:"]
    for p, student in zip(exp.prune, students, strict=True):
        if isinstance(student, SearchSpace):
            out += _search_lines(p, t, student, exp.eval)
            continue
        s = student.shape
        m = method_of(student.method)  # a search's student is a SearchSpace (above)
        how = student.describe() if m.layers_only else _changes(t, s)
        if not m.layers_only:  # its importance picks the neurons, channels and heads kept
            how += f" (importance: {p.importance})"
        ratio = count_params(t) / max(count_params(s), 1)
        out.append(f"  prune-{p.name}: {how} -> {s.describe()}: {_param_text(s)}, {ratio:.2f}x smaller")
        if student.num_drop:
            out.append(_selection_line(p, t, student.selection or layer_selection(p)))
    return out


def _selection_line(p: Any, t: Shape, selection: str) -> str:
    if p.importance_from:
        return f"    layers by {selection}: scores reused from {p.importance_from}"
    batches = math.ceil(p.calibration_samples / p.calibration_batch_size)
    return f"    layers by {selection}: costs {selection_cost(selection, t.num_layers)}; {batches} calibration batches"


def _search_lines(p: Any, t: Shape, space: SearchSpace, eval_cfg: Any = None) -> list[str]:
    """The search's budget, candidate count and param range, its speed budget, and the first few candidates."""
    from engine.config.prune_schema import score_window
    from engine.config.speed_target import speed_budget_for

    steps = f"{p.score_steps} distillation steps" + (f" (mean of {p.score_seeds} data orders)" if p.score_seeds > 1 else "")
    score = {"loss": "validation loss right after pruning",
             "distill": f"validation loss after {steps}",
             "distill+loss": f"the ranks of the loss after {steps} and right after pruning, summed",
             "distill-kd": f"the distillation loss over the last {score_window(p.score_steps)} of the [distill] run's "
                           f"first {steps}"}[p.score]
    if p.score_task:
        score = f"task '{p.score_task}'"
    out = [f"  prune-{p.name}: {space.describe()} by {score}"]
    if space.drops_layers():
        out.append(_selection_line(p, t, space.selection))
    speed = speed_budget_for(p, eval_cfg)
    if speed is not None:
        out.append(f"    speed budget: {speed.describe()}; {min(speed.fit_shapes, len(space.candidates))} "
                   "shapes timed with random weights fit a cost model that drops the candidates predicted to "
                   "miss it before the screen; the best of the screen are timed for real and only those "
                   "within it scored (timings cached per device)")
    if space.capped:
        out.append(f"    {space.cap_message()}")
    shown = evenly_spaced(space.screened, CHECK_SHOWN)
    for i in shown:
        c = space.candidates[i]
        out.append(f"    {candidate_label(c.shape)}: {_param_text(c.shape)}, {c.memory_gb:.3g} GiB")
    if len(space.screened) > len(shown):
        out.append(f"    ... and {len(space.screened) - len(shown)} more screened")
    return out
