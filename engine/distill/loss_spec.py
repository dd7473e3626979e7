"""What a KD loss computes: the kind, temperature, weights and chunking; shared by the chunk kernels
(engine/distill/losses.py, and the Triton kernel in engine/distill/kl_triton.py, which losses.py imports)."""

from __future__ import annotations

from dataclasses import dataclass

LOSS_KINDS = ("forward_kl", "reverse_kl", "jsd", "ce")


@dataclass(frozen=True)
class LossSpec:
    kind: str = "forward_kl"
    temperature: float = 1.0
    top_k: int | None = None
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    vocab: int | None = None  # shared real vocabulary for the KD terms; None = all columns
    chunk_tokens: int = 4096
    ignore_index: int = -100

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss kind '{self.kind}' is not one of {', '.join(LOSS_KINDS)}")

    @property
    def uses_teacher(self) -> bool:
        return self.kind != "ce" and self.kd_weight > 0

    @property
    def ce_coef(self) -> float:
        """Weight of the plain next-token loss."""
        return 1.0 if self.kind == "ce" else self.ce_weight
