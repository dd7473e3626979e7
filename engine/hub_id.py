"""The spelling of a Hugging Face hub id: what a `model.path` or `model.tokenizer` that is not a local
folder must look like. A rule about a config value, exported by engine.config (Compose asks it there);
it sits at the bottom, beside engine.errors, so engine.models.locate reads it without importing the config
package (whose `kernels = "liger"` check imports engine.models: the two would import each other)."""

from __future__ import annotations

import re

# huggingface_hub's rule: "name" or "namespace/name", letters, digits, '-', '_', '.', at most 96 each
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and not name.endswith((".", "-"))
