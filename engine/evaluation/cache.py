"""Per-model cache of the eval stage: a model is evaluated again only when it or the evaluation changed.

Each model's entry in results.json carries `cache_key`: a hash of the [eval] section, the device,
the sequence length, and the files of the model's checkpoint and of the tokenizer (name, size,
mtime). The eval stage writes results.json after every model, so a re-run after a change to one
student, or after an interruption, reuses every entry whose key still matches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def files_fingerprint(path: str | Path) -> Any:
    """(name, size, mtime_ns) of the files of a checkpoint folder; a hub id stands for itself."""
    p = Path(path)
    if not p.is_dir():
        return str(path)
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(p.iterdir()) if f.is_file()]


def model_key(eval_config: Any, model_path: str, tokenizer_path: str, device: str, seq_length: int) -> str:
    blob = json.dumps({"eval": eval_config.model_dump(mode="json"), "model": files_fingerprint(model_path),
                       "tokenizer": files_fingerprint(tokenizer_path), "device": device, "seq": seq_length},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_entries(results: Any) -> dict[str, dict[str, Any]]:
    """{model: entry} of a previous results.json that carry a cache key."""
    models = results.get("models") if isinstance(results, dict) else None
    if not isinstance(models, dict):
        return {}
    return {k: v for k, v in models.items() if isinstance(v, dict) and isinstance(v.get("cache_key"), str)}
