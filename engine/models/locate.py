"""Where a model or tokenizer named in an experiment lives: a local folder, or else a hub id.

Torch-free: `check` and the start of `run` use it to reject a path that cannot work before anything
is written, and the loaders use it so that a missing folder reads as such, not as the hub's
"Repo id must be in the form 'repo_name' or 'namespace/repo_name'".
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import UserError
from engine.hub_id import is_hub_id

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _local(name: str, key: str) -> Path | None:
    """The local path `name` names, None for a hub id; a UserError when it is neither."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    if is_hub_id(name):
        return None
    raise UserError(f"{key}: no such folder '{name}' (and not a hub id such as 'Qwen/Qwen3-0.6B'); "
                    "check the path")


def check_model_path(name: str, key: str = "model.path") -> None:
    """A local model folder holds a config.json with a model_type; a hub id is checked when loaded."""
    path = _local(name, key)
    if path is None:
        return
    if not path.is_dir():
        raise UserError(f"{key}: '{name}' is a file; give the model's folder (config.json and the weights)")
    config = path / "config.json"
    if not config.is_file():
        held = ", ".join(sorted(p.name for p in path.iterdir())[:5]) or "nothing"
        raise UserError(f"{key}: '{name}' has no config.json (it holds {held}); a Hugging Face model folder "
                        "holds config.json and the weights: write it with save_pretrained")
    try:
        doc = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{key}: {config} is not valid JSON ({e}); fix or replace it") from None
    if not isinstance(doc, dict) or not doc.get("model_type"):
        raise UserError(f"{key}: {config} has no model_type; add one, e.g. \"model_type\": \"llama\"")
    check_weights(path, key)


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_weights(path: Path, key: str = "model.path") -> None:
    """The folder holds weights, each shard its index names, and every file whole by its framing
    (engine/models/weights_check.py): a truncated model.safetensors failed only when a stage loaded it."""
    from engine.models.weights_check import safetensors_problem, torch_file_problem

    found = [path / w for w in WEIGHTS if (path / w).is_file()]
    if not found:
        raise UserError(f"{key}: '{path}' holds no weights (none of {', '.join(WEIGHTS)}); write the model with "
                        "save_pretrained, or download it whole")
    files: list[Path] = []
    for f in found:
        if not f.name.endswith(".index.json"):
            files.append(f)
            continue
        try:
            shards = sorted(set(json.loads(f.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{key}: {f} is not a readable weight index ({e}); download the model again") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise UserError(f"{key}: {f.name} names {missing[0]}, which is not in '{path}' ({len(missing)} of "
                            f"{len(shards)} shards missing); download the model whole")
        files += [path / s for s in shards]
    for f in files:
        problem = safetensors_problem(f) if f.suffix == ".safetensors" else torch_file_problem(f)
        if problem:
            raise UserError(f"{key}: '{path}' has a damaged weight file: {problem}; download or save the "
                            "model again")


def check_tokenizer_path(name: str, key: str = "model.tokenizer") -> None:
    """A local tokenizer folder holds tokenizer files; a hub id is checked when loaded."""
    path = _local(name, key)
    if path is None:
        return
    if not path.is_dir():
        raise UserError(f"{key}: '{name}' is a file; give the folder that holds it and the tokenizer's "
                        "other files")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        hint = "set model.tokenizer to one" if key == "model.path" else "give a folder that holds one"
        raise UserError(f"{key}: '{name}' holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); {hint}, "
                        "or train one with model.tokenizer_train_vocab")
    for f in ("tokenizer.json", "tokenizer_config.json"):  # a damaged one failed only when a stage loaded it
        if (path / f).is_file():
            try:
                json.loads((path / f).read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise UserError(f"{key}: {path / f} is not valid JSON ({e}); copy the tokenizer again") from None
