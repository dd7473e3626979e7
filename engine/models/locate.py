"""Where a model or tokenizer named in an experiment lives: a local folder, or else a hub id.

Torch-free: `check` and the start of `run` use it to reject a path that cannot work before anything
is written, and the loaders use it so that a missing folder reads as such, not as the hub's
"Repo id must be in the form 'repo_name' or 'namespace/repo_name'".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

# huggingface_hub's rule: "name" or "namespace/name", letters, digits, '-', '_', '.', at most 96 each
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and not name.endswith((".", "-"))


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
