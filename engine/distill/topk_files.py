"""What the teacher's top-k cache is on disk (engine/distill/teacher_topk.py writes and reads it), without
torch: `check` predicts its size from here."""

from __future__ import annotations

INDEX_BYTES = 4  # int32 token ids


def cache_bytes(windows: int, seq: int, k: int, value_bytes: int) -> int:
    """Disk taken by `windows` windows of the cache: k logits (`value_bytes` each) and k ids per position."""
    return windows * seq * k * (value_bytes + INDEX_BYTES)
