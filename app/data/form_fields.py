"""The Compose form's fields: which experiment keys the form edits (one FieldSpec per field, by
section and by student method), and how a field's text reads and writes a key's value.

A field's kind, choices and placeholder come from the schema (engine.config.key_spec reads the pydantic
models), a scratch teacher's from transformers' config class (engine.config.arch_default): the form
keeps no copy of a default. Placeholders say "default ..." / "e.g. ..." / "empty: ...", never a bare
value, so an empty field does not read as a typed one."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine.config import SUPPORTED_MODEL_TYPES, arch_default, key_spec
from engine.contract import METHODS as PRUNE_METHODS
from engine.contract import PruneMethod

# sections whose fields edit their own dict (a student, an optional section's stash, the top level): keys
# without the section; the others' keys are dotted from the file's top ("model.dtype")
OWN_DICT_SECTIONS = ("", "prune", "finetune", "distill", "eval")


@dataclass(frozen=True)
class FieldSpec:
    key: str  # dotted key inside the target dict, e.g. "model.dtype" (the file) or "lr" (a section)
    label: str
    kind: str = "str"  # str | int | auto_int | float | size | ints | gpus | strs | choice | bool
    choices: tuple[str, ...] = ()
    placeholder: str = ""  # what an empty field gives, in words ("default 30"): never a bare value
    blank: str = "default"  # what a choice left blank shows: the schema's default ("default ddp")
    section: str | None = None  # the schema section it was read from (schema_field); None: not the schema's


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


def schema_field(section: str, key: str, label: str, kind: str | None = None, hint: str = "") -> FieldSpec:
    """A field over `key` of the schema's `section` (engine.config.explain.SECTIONS): its kind,
    choices and "default ..." placeholder read from the schema, so they follow it. `hint`: words for
    an empty field with no default ("default: the model's own"), or after the default ("default 64; ...")."""
    ks = key_spec(section, key)
    kind = kind or ks.kind
    default = ks.default
    shown = "" if default in (None, [], {}) or isinstance(default, bool) else format_field(kind, default)
    if shown:
        bounds = ks.bounds_text() if kind == "float" and ks.lower is not None and ks.upper is not None else ""
        joint = " " if hint.startswith("(") else "; "  # "default 100 (steps)", "default 1024; fewer: ..."
        placeholder = f"default {shown}" + (joint + hint if hint else f" ({bounds})" if bounds else "")
    else:
        placeholder = hint or ("required" if ks.required else "default: none")
    choices = ks.choices if kind == "choice" else ()
    return FieldSpec(key if section in OWN_DICT_SECTIONS else f"{section}.{key}",
                     label, kind, tuple(choices), placeholder if kind != "choice" else "",
                     f"default {shown}" if kind == "choice" and shown else hint or "default", section)


def arch_placeholder(key: str, arch: dict[str, Any]) -> str:
    """What an empty `[model].arch` key gives: transformers' default for the arch's model_type (llama's
    before one is picked), from its config class; kv heads follow the heads."""
    model_type = str(arch.get("model_type") or "llama")
    default = arch_default(model_type, key)
    if key == "num_key_value_heads" and default is None:
        heads = arch.get("num_attention_heads") or arch_default(model_type, "num_attention_heads")
        return f"empty: {heads} (= heads)"
    if default is None:
        return f"empty: {model_type}'s own rule"
    note = {"num_attention_heads": "; must divide hidden", "max_position_embeddings": "; at least data.seq_length"}
    return f"empty: {default} ({model_type}'s default){note.get(key, '')}"


def _arch(key: str, label: str) -> FieldSpec:
    return FieldSpec(f"model.arch.{key}", label, "int", placeholder=arch_placeholder(key, {}))


TOP = (
    schema_field("", "name", "name", hint="required, e.g. my-experiment"),
    schema_field("", "runs_dir", "runs dir"),
)
MODEL = (
    schema_field("model", "init", "init"),
    schema_field("model", "path", "teacher", hint="e.g. meta-llama/Llama-3.1-8B (a hub id) or a local dir"),
    schema_field("model", "dtype", "dtype"),
    schema_field("model", "tokenizer", "tokenizer", hint="default: the model's own"),
)
# a fresh teacher (init = "scratch"): its architecture ([model].arch, transformers' config keys: their
# defaults are the config class's, shown for the model_type picked), and a tokenizer trained on the data
SCRATCH = (
    FieldSpec("model.arch.model_type", "arch type", "choice", SUPPORTED_MODEL_TYPES, blank="none: pick one"),
    _arch("hidden_size", "hidden"),
    _arch("intermediate_size", "ffn"),
    _arch("num_hidden_layers", "layers"),
    _arch("num_attention_heads", "heads"),
    _arch("num_key_value_heads", "kv heads"),
    _arch("max_position_embeddings", "max positions"),
    FieldSpec("model.arch.tie_word_embeddings", "tie embeddings", "bool"),  # the config's default: untied
    schema_field("model", "tokenizer_train_vocab", "train vocab", hint="e.g. 4096 (or set tokenizer)"),
)
DATA = (
    schema_field("data", "dataset", "dataset", hint="e.g. wikitext | builtin:stdlib-docs"),
    schema_field("data", "config", "config", hint="e.g. wikitext-103-v1"),
    schema_field("data", "train_files", "train files", hint="e.g. data/train.jsonl, ..."),
    schema_field("data", "validation_files", "val files", hint="default: hold out a fraction"),
    schema_field("data", "text_field", "text field"),
    schema_field("data", "seq_length", "seq length"),
    schema_field("data", "test_fraction", "test fraction", hint="held out when no test split; e.g. 0.05"),
)
TRAIN = (  # [finetune] and [distill] share these (TrainConfig): the same defaults
    schema_field("finetune", "steps", "steps"),
    schema_field("finetune", "global_batch_size", "global batch"),
    schema_field("finetune", "micro_batch_size", "micro batch", hint="the largest that fits; or e.g. 4"),
    schema_field("finetune", "lr", "lr"),
    schema_field("finetune", "min_lr", "min lr"),
    schema_field("finetune", "warmup_steps", "warmup"),
    schema_field("finetune", "val_interval", "val every"),
    schema_field("finetune", "checkpoint_interval", "ckpt every", hint="(steps)"),
)
DISTILL_EXTRA = (
    schema_field("distill", "loss", "KD loss"),
    schema_field("distill", "temperature", "temperature"),
    schema_field("distill", "ce_weight", "CE weight"),
)
EVAL = (  # [eval]: the splits' loss always; downstream tasks through lm-evaluation-harness
    schema_field("eval", "tasks", "tasks", hint="e.g. hellaswag, arc_easy | experiments/tasks/stdlib_lastword"),
    schema_field("eval", "limit", "task limit", hint="default: every example (e.g. 200 for a quick look)"),
)
LAUNCH = (
    schema_field("launch", "gpus", "GPUs", hint="or e.g. 0,1,2,3"),
    schema_field("launch", "strategy", "strategy"),
    schema_field("launch", "parallel", "parallel"),  # distill the students at once; <= 15 characters
)
# A student's fields by [[prune]] method: the keys its record lists (PruneMethod.fields, in that order),
# then selection and calibration. Labels fit the 16-column label column: 15 characters at most.
SELECTION = schema_field("prune", "selection", "selection", hint="default: by method")
# every method scores importance on calibration text: 1024 samples took 14 minutes on a CPU
CALIBRATION = schema_field("prune", "calibration_samples", "calib samples", hint="fewer, faster: e.g. 64 on a CPU")
_UNCHANGED = "default: unchanged (the teacher's)"
TARGET_FIELDS = {s.key: s for s in (
    # depth
    schema_field("prune", "drop_layers", "drop layers", hint="e.g. 16-31 (0-indexed)"),
    # width (num_layers: layers dropped beside the widths)
    schema_field("prune", "ffn_hidden_size", "ffn", hint=_UNCHANGED),
    schema_field("prune", "hidden_size", "hidden", hint=_UNCHANGED),
    schema_field("prune", "num_attention_heads", "heads", hint=_UNCHANGED),
    schema_field("prune", "num_key_value_heads", "kv heads", hint=_UNCHANGED),
    schema_field("prune", "num_layers", "layers", hint="default: unchanged (or keep N; importance picks)"),
    # search: the student described by its budget (engine/search/)
    schema_field("prune", "target_params", "target params", hint='e.g. 0.6 (of the teacher) | "4.5B" | 81_000_000'),
    schema_field("prune", "target_memory_gb", "or memory GiB", hint="e.g. 8: weights + KV cache, in model.dtype"),
    schema_field("prune", "memory_seq_length", "KV seq length", hint="default: data.seq_length"),
    schema_field("prune", "memory_batch_size", "KV batch"),
    schema_field("prune", "tolerance", "tolerance", hint="(of the target)"),
    schema_field("prune", "axes", "axes", "strs"),
    schema_field("prune", "hidden_multiple", "hidden step"),
    schema_field("prune", "ffn_multiple", "ffn step"),
    schema_field("prune", "top_k", "top k", hint="(candidates pruned and scored)"),
    schema_field("prune", "score", "score"),
    schema_field("prune", "score_steps", "score steps", hint="(distill-kd: 50)"),
    schema_field("prune", "score_task", "score task", hint="default: the loss; or an [eval] task"),
    schema_field("prune", "audit", "audit", hint="(0: off; N: distil the N best, check the order)"),
)}
# num_layers where drop_layers comes first (depth): the other way to say which layers go
KEEP_N = schema_field("prune", "num_layers", "or keep N", hint="e.g. 16 layers kept; importance picks")


def _student_fields(m: PruneMethod) -> tuple[FieldSpec, ...]:
    keep_n = "drop_layers" in m.fields
    return (*(KEEP_N if k == "num_layers" and keep_n else TARGET_FIELDS[k] for k in m.fields), SELECTION, CALIBRATION)


STUDENT_FIELDS = {m.name: _student_fields(m) for m in PRUNE_METHODS}
DEPTH, WIDTH, SEARCH = STUDENT_FIELDS["depth"], STUDENT_FIELDS["width"], STUDENT_FIELDS["search"]  # (tests)
METHODS = key_spec("prune", "method").choices  # the schema's methods, in its order
assert set(METHODS) == set(STUDENT_FIELDS), "a [[prune]] method without its fields"


def foreign_keys(method: str | None) -> set[str]:
    """Target keys of the other methods that `method` has no field for: dropped when a student's
    method changes (a search rejects num_layers, a depth prune rejects widths)."""
    own = {s.key for s in STUDENT_FIELDS.get(method, ())}
    return {s.key for specs in STUDENT_FIELDS.values() for s in specs} - own


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
