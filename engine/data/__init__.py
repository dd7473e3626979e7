"""Data: sources -> tokenizer -> packed token files (`prepare`), and `PackedDataset` to read them.

`import engine.data` stays light (numpy only): the tokenizer libraries and `datasets` are
imported only when `prepare` runs.
"""

from __future__ import annotations

from typing import Any

from engine.data.dataset import PackedDataset, read_meta, split_documents, split_tokens

__all__ = ["PackedDataset", "read_meta", "split_documents", "split_tokens", "prepare", "prepare_stage"]


def prepare(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from engine.data.prepare import prepare as _prepare

    return _prepare(*args, **kwargs)


def prepare_stage(ctx: Any) -> None:
    from engine.data.prepare import prepare_stage as _stage

    _stage(ctx)
