"""`[model].arch` (init = "scratch") checked against the transformers config class of its model_type.

transformers stores any unknown keyword on a config without a word, so `hidden_sise = 128` would
build a default-sized model. The keys a config class knows are read from the transformers source
files with `ast`: importing a config class imports torch, and the TUI validates through here.
When the source cannot be read (another transformers layout), only the shape checks run.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
from functools import cache
from pathlib import Path
from typing import Any

# The architectures slimlab knows how to prune (engine/models/adapter.py maps their modules).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

# Keys that decide the parameter layout: positive integers (engine.config.shape reads them).
SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim")


def check_arch(arch: dict[str, Any]) -> None:
    """ValueError ("arch.<key>: ...", one line with the fix) on an unknown key or an impossible shape."""
    model_type = arch.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"arch.model_type: '{model_type}' is not supported; slimlab prunes "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    known = config_keys(str(model_type))
    if known is not None:
        for key in arch:
            if key != "model_type" and key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.7)
                hint = f"did you mean '{close[0]}'?" if close else "see the config class for the keys it takes"
                raise ValueError(f"arch.{key}: not a key of transformers' {model_type} config; {hint}")
    _check_types(arch, config_types(str(model_type)))
    for key in SHAPE_KEYS:
        value = arch.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"arch.{key}: {value!r} is not a positive whole number")
    # a key left out is the config class's default: hidden 190 with heads left out is 190 / 32 heads
    defaults = config_defaults(str(model_type))
    heads, kv, hidden = (arch.get(k, defaults.get(k)) for k in ("num_attention_heads", "num_key_value_heads",
                                                                "hidden_size"))
    heads_said = "num_attention_heads" in arch or "hidden_size" not in arch
    if heads and kv and heads % kv:
        said = "" if "num_key_value_heads" in arch else f" ({model_type}'s default, left out)"
        raise ValueError(f"arch.num_key_value_heads: {kv}{said} does not divide num_attention_heads = {heads}; "
                         "each KV head serves a whole group of query heads")
    # head_dim defaults to hidden_size // heads (qwen3: 128), and llama's config insists on it either way
    needs_divisor = model_type == "llama" or (model_type != "qwen3" and not arch.get("head_dim"))
    if heads and hidden and needs_divisor and hidden % heads:
        if heads_said:
            raise ValueError(f"arch.num_attention_heads: {heads} does not divide hidden_size = {hidden}; "
                             "pick a divisor, or set head_dim")
        raise ValueError(f"arch.hidden_size: {hidden} is not a multiple of num_attention_heads = {heads} "
                         f"({model_type}'s default, heads left out); pick a multiple, or set num_attention_heads")


def _check_types(arch: dict[str, Any], types: dict[str, frozenset[str]]) -> None:
    """Numbers and booleans as the config class annotates them: transformers would store
    `rms_norm_eps = "x"` as given, and the stage would die on it mid-pipeline."""
    for key, value in arch.items():
        kinds = types.get(key, frozenset()) - {"None"}
        if value is None or not kinds:
            continue
        if kinds <= {"int", "float"} and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"arch.{key}: {value!r} is not a number; write a number without quotes")
        if kinds == {"float"} and not math.isfinite(value):
            raise ValueError(f"arch.{key}: {value!r} is not a finite number")
        if kinds == {"bool"} and not isinstance(value, bool):
            raise ValueError(f"arch.{key}: {value!r} is not true or false")


@cache
def config_defaults(model_type: str) -> dict[str, Any]:
    """The literal defaults of transformers' config class for `model_type` (`hidden_size: int = 4096`
    -> {"hidden_size": 4096}; None stays None), read from its source like config_types; {} when not found."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None or not model_type.isidentifier():
        return {}
    tree = _parse(Path(spec.origin).parent / "models" / model_type / f"configuration_{model_type}.py")
    for node in _config_classes(tree, model_type):
        out = {}
        for s in node.body:
            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None:
                value = _constant(s.value)
                if value is not _NOT_CONSTANT:
                    out[s.target.id] = value
        return out
    return {}


_NOT_CONSTANT = object()


def _constant(node: ast.expr) -> Any:
    """A literal, or a product of whole numbers (mistral: `4096 * 32`); _NOT_CONSTANT for anything
    computed otherwise (`interval(...)(default=0.02)`)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        a, b = _constant(node.left), _constant(node.right)
        return a * b if all(isinstance(x, int) and not isinstance(x, bool) for x in (a, b)) else _NOT_CONSTANT
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _NOT_CONSTANT


def _config_classes(tree: ast.Module | None, model_type: str) -> list[ast.ClassDef]:
    """The classes of a module whose body says `model_type = "<model_type>"`."""
    return [node for node in (tree.body if tree else []) if isinstance(node, ast.ClassDef) and any(
        isinstance(s, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "model_type" for t in s.targets)
        and isinstance(s.value, ast.Constant) and s.value.value == model_type for s in node.body)]


@cache
def config_types(model_type: str) -> dict[str, frozenset[str]]:
    """The annotated type names of each field of transformers' config class for `model_type` (v5 dataclass
    style: `rms_norm_eps: float = 1e-6` -> {"float"}); {} when the source is not found."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None or not model_type.isidentifier():
        return {}
    tree = _parse(Path(spec.origin).parent / "models" / model_type / f"configuration_{model_type}.py")
    for node in _config_classes(tree, model_type):
        return {s.target.id: frozenset(p.strip() for p in ast.unparse(s.annotation).split("|"))
                for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return {}


@cache
def config_keys(model_type: str) -> frozenset[str] | None:
    """Every key transformers' config class for `model_type` takes, or None when its source is not found."""
    spec = importlib.util.find_spec("transformers")  # finds the package without importing it
    if spec is None or spec.origin is None or not model_type.isidentifier():
        return None
    root = Path(spec.origin).parent
    model_file = root / "models" / model_type / f"configuration_{model_type}.py"
    base_file = root / "configuration_utils.py"
    if not (model_file.is_file() and base_file.is_file()):
        return None
    keys = _class_keys(model_file, model_type=model_type)
    if not keys:
        return None
    keys |= _class_keys(base_file, class_name="PreTrainedConfig")
    for f in (base_file, root / "modeling_rope_utils.py"):  # legacy keys popped from **kwargs: rope_theta, ...
        keys |= _kwargs_keys(f)
    return frozenset(keys)


def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _class_keys(path: Path, model_type: str | None = None, class_name: str | None = None) -> set[str]:
    """Fields (v5 dataclass style), __init__ arguments (v4 style) and attribute_map keys of one class:
    the one named `class_name`, or the one whose `model_type = "..."` is `model_type`."""
    tree = _parse(path)
    for node in tree.body if tree else []:
        if not isinstance(node, ast.ClassDef):
            continue
        assigns = {t.id: s.value for s in node.body if isinstance(s, ast.Assign)
                   for t in s.targets if isinstance(t, ast.Name)}
        own_type = assigns.get("model_type")
        if node.name != class_name and not (isinstance(own_type, ast.Constant) and own_type.value == model_type):
            continue
        keys = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
        for s in node.body:
            if isinstance(s, ast.FunctionDef) and s.name == "__init__":
                keys |= {a.arg for a in s.args.args + s.args.kwonlyargs if a.arg != "self"}
        amap = assigns.get("attribute_map")
        if isinstance(amap, ast.Dict):
            keys |= {k.value for k in amap.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        return keys
    return set()


def _kwargs_keys(path: Path) -> set[str]:
    """Names read with kwargs.pop("name") / kwargs.get("name") in a module."""
    tree = _parse(path)
    return {n.args[0].value for n in (ast.walk(tree) if tree else [])
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr in ("pop", "get", "setdefault") and isinstance(n.func.value, ast.Name)
            and n.func.value.id == "kwargs" and n.args and isinstance(n.args[0], ast.Constant)
            and isinstance(n.args[0].value, str)}
