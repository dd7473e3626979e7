"""The Compose form's fields: which experiment keys the form edits (one FieldSpec per field, by
section and by student method), and how a field's text reads and writes a key's value."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine.config.arch import SUPPORTED_MODEL_TYPES


@dataclass(frozen=True)
class FieldSpec:
    key: str  # dotted key inside the experiment, e.g. "finetune.lr"
    label: str
    kind: str = "str"  # str | int | auto_int | float | size | ints | gpus | strs | choice | bool
    choices: tuple[str, ...] = ()
    placeholder: str = ""


TOP = (
    FieldSpec("name", "name", placeholder="my-experiment"),
    FieldSpec("runs_dir", "runs dir", placeholder="runs"),
)
MODEL = (
    FieldSpec("model.init", "init", "choice", ("pretrained", "scratch")),
    FieldSpec("model.path", "teacher", placeholder="hub id or local dir, e.g. meta-llama/Llama-3.1-8B"),
    FieldSpec("model.dtype", "dtype", "choice", ("bfloat16", "float16", "float32")),
    FieldSpec("model.tokenizer", "tokenizer", placeholder="default: the model's own"),
)
# a fresh teacher (init = "scratch"): its architecture, and a tokenizer trained on the data. A
# placeholder says what an empty field gives (the config class's default: llama's below), never a
# value that looks typed in: "8" read as 8 heads where an empty field gave 32.
SCRATCH = (
    FieldSpec("model.arch.model_type", "arch type", "choice", SUPPORTED_MODEL_TYPES),
    FieldSpec("model.arch.hidden_size", "hidden", "int", placeholder="empty: 4096 (llama's default); e.g. 256"),
    FieldSpec("model.arch.intermediate_size", "ffn", "int", placeholder="empty: 11008 (llama's default)"),
    FieldSpec("model.arch.num_hidden_layers", "layers", "int", placeholder="empty: 32 (llama's default)"),
    FieldSpec("model.arch.num_attention_heads", "heads", "int",
              placeholder="empty: 32 (llama's default); must divide hidden"),
    FieldSpec("model.arch.num_key_value_heads", "kv heads", "int", placeholder="empty: 32 (= heads)"),
    FieldSpec("model.arch.max_position_embeddings", "max positions", "int",
              placeholder="empty: 2048 (llama's default); at least data.seq_length"),
    FieldSpec("model.arch.tie_word_embeddings", "tie embeddings", "bool"),  # llama's default: untied
    FieldSpec("model.tokenizer_train_vocab", "train vocab", "int", placeholder="4096 (or set tokenizer)"),
)
DATA = (
    FieldSpec("data.dataset", "dataset", placeholder="wikitext | builtin:stdlib-docs"),
    FieldSpec("data.config", "config", placeholder="wikitext-103-v1"),
    FieldSpec("data.train_files", "train files", "strs", placeholder="data/train.jsonl, ..."),
    FieldSpec("data.validation_files", "val files", "strs", placeholder="default: hold out a fraction"),
    FieldSpec("data.text_field", "text field", placeholder="default text"),
    FieldSpec("data.seq_length", "seq length", "int", placeholder="default 2048"),
    FieldSpec("data.test_fraction", "test fraction", "float",
              placeholder="default 0; held out for a test split when none is given, e.g. 0.05"),
)
TRAIN = (  # placeholders: "default N", the schema's own default (a test holds them to it)
    FieldSpec("steps", "steps", "int", placeholder="default 30"),
    FieldSpec("global_batch_size", "global batch", "int", placeholder="default 128"),
    FieldSpec("micro_batch_size", "micro batch", "auto_int", placeholder="auto (largest that fits) | 4"),
    FieldSpec("lr", "lr", "float", placeholder="default 1e-4"),
    FieldSpec("min_lr", "min lr", "float", placeholder="default 1e-5"),
    FieldSpec("warmup_steps", "warmup", "int", placeholder="default 2"),
    FieldSpec("val_interval", "val every", "int", placeholder="default 10"),
    FieldSpec("checkpoint_interval", "ckpt every", "int", placeholder="default 100 (steps)"),
)
DISTILL_EXTRA = (
    FieldSpec("loss", "KD loss", "choice", ("forward_kl", "reverse_kl", "jsd", "ce")),
    FieldSpec("temperature", "temperature", "float", placeholder="default 1.0"),
    FieldSpec("ce_weight", "CE weight", "float", placeholder="default 0.0"),
)
EVAL = (  # [eval]: the splits' loss always; downstream tasks through lm-evaluation-harness
    FieldSpec("tasks", "tasks", "strs", placeholder="e.g. hellaswag, arc_easy | experiments/tasks/stdlib_lastword"),
    FieldSpec("limit", "task limit", "int", placeholder="default: every example (e.g. 200 for a quick look)"),
)
LAUNCH = (
    FieldSpec("launch.gpus", "GPUs", "gpus", placeholder="all | 0,1,2,3"),
    FieldSpec("launch.strategy", "strategy", "choice", ("ddp", "fsdp")),
    FieldSpec("launch.parallel", "parallel", "bool"),  # distill the students at once; <= 15 characters
)
# A student's fields by [[prune]] method (labels fit the 16-column label column: 15 characters at most)
SELECTION = FieldSpec("selection", "selection", "choice", ("block-influence", "lm-loss", "contiguous", "last"))
# every method scores importance on calibration text: 1024 samples took 14 minutes on a CPU
CALIBRATION = FieldSpec("calibration_samples", "calib samples", "int",
                        placeholder="default 1024 (fewer: a faster prune, e.g. 64 on a CPU)")
DEPTH = (
    FieldSpec("drop_layers", "drop layers", "ints", placeholder="16-31  (0-indexed)"),
    FieldSpec("num_layers", "or keep N", "int", placeholder="layers to keep; importance picks"),
    SELECTION,
    CALIBRATION,
)
WIDTH = (
    FieldSpec("ffn_hidden_size", "ffn", "int", placeholder="unchanged"),
    FieldSpec("hidden_size", "hidden", "int", placeholder="unchanged"),
    FieldSpec("num_attention_heads", "heads", "int", placeholder="unchanged"),
    FieldSpec("num_key_value_heads", "kv heads", "int", placeholder="unchanged"),
    FieldSpec("num_layers", "layers", "int", placeholder="unchanged (or keep N; importance picks)"),
    SELECTION,
    CALIBRATION,
)
SEARCH = (  # the student described by its budget (engine/search/)
    FieldSpec("target_params", "target params", "size", placeholder='0.6 (of the teacher) | "4.5B" | 81_000_000'),
    FieldSpec("target_memory_gb", "or memory GiB", "float", placeholder="weights + KV cache, in model.dtype"),
    FieldSpec("memory_seq_length", "KV seq length", "int", placeholder="default: data.seq_length"),
    FieldSpec("memory_batch_size", "KV batch", "int", placeholder="1"),
    FieldSpec("tolerance", "tolerance", "float", placeholder="0.03 (of the target)"),
    FieldSpec("axes", "axes", "strs", placeholder="num_layers, hidden_size, ffn_hidden_size"),
    FieldSpec("hidden_multiple", "hidden step", "int", placeholder="64"),
    FieldSpec("ffn_multiple", "ffn step", "int", placeholder="64"),
    FieldSpec("top_k", "top k", "int", placeholder="10 (candidates pruned and scored)"),
    FieldSpec("score", "score", "choice", ("loss", "distill")),
    FieldSpec("score_steps", "score steps", "int", placeholder="20 (score = distill)"),
    FieldSpec("score_task", "score task", placeholder="an [eval] task scored instead of the loss"),
    SELECTION,
    CALIBRATION,
)
STUDENT_FIELDS = {"depth": DEPTH, "width": WIDTH, "search": SEARCH}
METHODS = tuple(STUDENT_FIELDS)


def foreign_keys(method: str | None) -> set[str]:
    """Target keys of the other methods that `method` has no field for: dropped when a student's
    method changes (a search rejects num_layers, a depth prune rejects widths)."""
    own = {s.key for s in STUDENT_FIELDS.get(method, ())}
    return {s.key for specs in STUDENT_FIELDS.values() for s in specs} - own


_INT = re.compile(r"[+-]?\d[\d_]*")


def parse_ints(text: str) -> list[int] | None:
    """'16-19, 30' -> [16, 17, 18, 19, 30]; None when it is not such a list."""
    out: list[int] = []
    for part in text.replace(" ", "").strip("[]").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-|\.\.)(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                return None
            out += range(a, b + 1)
        elif _INT.fullmatch(part):
            out.append(int(part))
        else:
            return None
    return out


def parse_field(kind: str, text: str) -> Any:
    """Text typed in a field -> the TOML value. Unparsable text stays a string, so the schema
    reports it exactly as `check` would report the same value in a file."""
    text = text.strip()
    if kind == "int":
        return int(text.replace("_", "")) if _INT.fullmatch(text) else text
    if kind == "auto_int":  # micro_batch_size: a number, or "auto" (the largest that fits the GPU)
        return "auto" if text.lower() == "auto" else parse_field("int", text)
    if kind == "size":  # target_params: a count (81_000_000), a fraction (0.6) or a string ("4.5B")
        number = parse_field("int", text)
        return number if isinstance(number, int) else parse_field("float", text)
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            return text
    if kind == "ints":
        ints = parse_ints(text)
        return text if ints is None else ints
    if kind == "gpus":
        if text.lower() == "all":
            return "all"
        ints = parse_ints(text)
        return text if ints is None else ints
    if kind == "strs":
        return [p.strip() for p in text.split(",") if p.strip()]
    return text


def format_field(kind: str, value: Any) -> str:
    """The inverse of parse_field, for filling the form from a loaded file."""
    if value is None:
        return ""
    if kind in ("ints", "gpus") and isinstance(value, list):
        return _compact(value)
    if kind == "strs" and isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _compact(ints: list[Any]) -> str:
    if not all(isinstance(i, int) for i in ints):
        return ", ".join(str(i) for i in ints)
    out, s, i = [], sorted(ints), 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if j - i < 2 else f"{s[i]}-{s[j]}")
        if 0 < j - i < 2:
            out += [str(x) for x in s[i + 1:j + 1]]
        i = j + 1
    return ", ".join(out)


def get_key(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key; "" / None / [] removes it (the schema default applies)."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value in ("", None, []):
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
