"""What the teacher's top-k cache is on disk (engine/distill/teacher_topk.py writes and reads it), without
torch: `check` predicts its size from here."""

from __future__ import annotations

INDEX_BYTES = 4  # int32 token ids


def cache_bytes(windows: int, seq: int, k: int, value_bytes: int) -> int:
    """Disk taken by `windows` windows of the cache: k logits (`value_bytes` each) and k ids per position."""
    return windows * seq * k * (value_bytes + INDEX_BYTES)


def stored_dtype(mixed_precision: str, weights_dtype: str, cuda: bool) -> str:
    """The dtype the teacher's logits are computed in, and stored: on CUDA autocast's under bf16/fp16 mixed
    precision, else the teacher's weights' ([model].dtype); on the CPU fp32 (it runs no mixed precision,
    engine/training/setup.py, and loads the teacher in fp32, stage_bodies.load_teacher)."""
    if not cuda:
        return "float32"
    return {"bf16": "bfloat16", "fp16": "float16"}.get(mixed_precision, weights_dtype)
