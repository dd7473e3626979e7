"""Data: sources -> tokenizer -> packed token files (`prepare`), and `PackedDataset` to read them.

`import engine.data` stays light (numpy only): the tokenizer libraries and `datasets` are
imported only when `prepare` runs.
"""

from __future__ import annotations

from engine.data.dataset import PackedDataset, read_meta, split_documents, split_tokens

__all__ = ["PackedDataset", "read_meta", "split_documents", "split_tokens"]
