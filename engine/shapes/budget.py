"""What a search aims at: a parameter count or a memory footprint, with a tolerance. Torch-free.

`target_params` is an absolute count (81_000_000, "4.5B") or a fraction of the teacher (0.6).
`target_memory_gb` is the weights plus the KV cache at `memory_seq_length` x `memory_batch_size`
tokens, in the model's dtype, in GiB (2**30 bytes, what torch and nvidia-smi report). A parameter
target accepts candidates within +-tolerance; a memory target is a budget to fit, so candidates
lie within tolerance *below* it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.config.counts import parse_param_count
from engine.config.shape import Shape, count_params
from engine.contract import GIB, human_count

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def memory_gib(s: Shape, dtype: str, seq_length: int, batch_size: int) -> float:
    """Weights plus the KV cache (keys and values of every layer) in GiB."""
    b = DTYPE_BYTES[dtype]
    kv = 2 * s.num_layers * s.num_kv_heads * s.head_dim * seq_length * batch_size
    return (count_params(s) + kv) * b / GIB


@dataclass(frozen=True)
class Budget:
    """The metric a search constrains (params or memory_gb) and its accepted range [lo, hi]."""

    metric: str  # "params" | "memory_gb"
    target: float
    lo: float
    hi: float
    dtype: str = "bfloat16"
    seq_length: int = 0
    batch_size: int = 1
    fraction: float | None = None  # target_params given as a fraction of the teacher

    def measure(self, s: Shape) -> float:
        if self.metric == "params":
            return float(count_params(s))
        return memory_gib(s, self.dtype, self.seq_length, self.batch_size)

    def fits(self, value: float) -> bool:
        return self.lo <= value <= self.hi

    def describe(self) -> str:
        if self.metric == "params":
            frac = f"{self.fraction:g} of the teacher = " if self.fraction is not None else ""
            return (f"{frac}{human_count(int(self.target))} params "
                    f"(+-{(self.hi / self.target - 1):.0%}: {human_count(int(self.lo))}..{human_count(int(self.hi))})")
        return (f"{self.target:g} GiB of weights + KV cache ({self.batch_size} x {self.seq_length} tokens, "
                f"{self.dtype}; {self.lo:.3g}..{self.hi:.3g} GiB)")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.metric, "target": self.target, "lo": self.lo, "hi": self.hi}
        if self.fraction is not None:
            out["fraction"] = self.fraction
        if self.metric == "memory_gb":
            out.update(dtype=self.dtype, seq_length=self.seq_length, batch_size=self.batch_size)
        return out


def budget_for(p: Any, teacher: Shape, dtype: str, seq_length: int) -> Budget:
    """The Budget of a search [[prune]] table `p` (an engine.config.PruneConfig)."""
    tol = p.tolerance
    if p.target_params is not None:
        value = parse_param_count(p.target_params)
        fraction = value if isinstance(value, float) else None
        target = fraction * count_params(teacher) if fraction is not None else float(value)
        return Budget("params", target, target * (1 - tol), target * (1 + tol), dtype, fraction=fraction)
    seq = p.memory_seq_length or seq_length
    target = float(p.target_memory_gb)
    return Budget("memory_gb", target, target * (1 - tol), target, dtype, seq, p.memory_batch_size)
