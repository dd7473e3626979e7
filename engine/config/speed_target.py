"""A search's speed budget as the experiment file gives it: the targets, the batch and lengths they are
measured at, and their defaults. Torch-free: `check`, the TUI, the prune stage and the eval stage read it.

`target_decode_ms` (ms per generated token) and `target_prefill_tokens_per_s` of a search [[prune]]
table, at `speed_batch_size` (default: the smallest of [eval] speed_batch_sizes, else 1) and
`speed_prompt_tokens` / `speed_new_tokens` (default: [eval]'s keys, else the device's defaults below,
which the eval stage's speed measurement uses too: engine.evaluation.speed). The measurement's rules
(repeats, spread, time cap) are [eval]'s. How a search meets it: engine.search.speed_budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import UserError

FIT_SHAPES = 12  # shapes timed with random weights to fit the cost model, when speed_fit_shapes is not set
# the speed measurement's default batch sizes and lengths per device (the eval stage's too)
GPU_DEFAULTS: dict[str, Any] = {"batch_sizes": [1, 16], "prompt_tokens": 512, "new_tokens": 128}
CPU_DEFAULTS: dict[str, Any] = {"batch_sizes": [1, 4], "prompt_tokens": 64, "new_tokens": 16}


@dataclass(frozen=True)
class SpeedBudget:
    """The speed targets of a search and the settings they are measured at (None: the device's default)."""

    decode_ms: float | None
    prefill_tokens_per_s: float | None
    batch_size: int
    prompt_tokens: int | None
    new_tokens: int | None
    fit_shapes: int
    repeats: int = 3
    max_spread: float = 0.05
    max_seconds: float = 30.0

    def settings(self, device_type: str) -> dict[str, Any]:
        """measure_speeds' settings on a device of `device_type` ("cuda", "cpu", ...)."""
        d = GPU_DEFAULTS if device_type == "cuda" else CPU_DEFAULTS
        return {"batch_sizes": [self.batch_size], "prompt_tokens": self.prompt_tokens or d["prompt_tokens"],
                "new_tokens": self.new_tokens or d["new_tokens"], "repeats": self.repeats,
                "max_spread": self.max_spread, "max_seconds": self.max_seconds}

    def check_positions(self, max_positions: int | None, where: str, device_type: str | None = None) -> None:
        """A prompt plus generation the model cannot hold (the eval stage would shorten it: a budget must be
        measured at the lengths it states). device_type None (`check`): the CPU's defaults, the smallest."""
        s = self.settings(device_type or "cpu")
        prompt, new = s["prompt_tokens"], s["new_tokens"]
        if max_positions and prompt + new > max_positions:
            device = "a GPU" if device_type == "cuda" else "the CPU"
            on = "" if self.prompt_tokens and self.new_tokens else f" ({device}'s default)"
            raise UserError(f"{where}.speed_prompt_tokens: a speed budget at a {prompt}-token prompt + {new} new "
                            f"tokens{on} exceeds the teacher's max_position_embeddings = {max_positions}; set "
                            "speed_prompt_tokens and speed_new_tokens (here or in [eval]) to fit it")

    def meets(self, e: dict[str, Any], slack: float = 0.0) -> bool:
        """Timing or prediction `e` within the budget (loosened by `slack`, a relative error)."""
        ok = self.decode_ms is None or e["decode_ms"] <= self.decode_ms * (1 + slack)
        return ok and (self.prefill_tokens_per_s is None
                       or e["prefill_tokens_per_s"] >= self.prefill_tokens_per_s / (1 + slack))

    def targets(self) -> str:
        parts = []
        if self.decode_ms is not None:
            parts.append(f"decode <= {self.decode_ms:g} ms/token")
        if self.prefill_tokens_per_s is not None:
            parts.append(f"prefill >= {self.prefill_tokens_per_s:,.0f} tokens/s")
        return " and ".join(parts)

    def describe(self, device_type: str | None = None) -> str:
        """The targets and where they are measured; device_type None (`check`): both devices' defaults."""
        def length(key: str) -> str:
            own = getattr(self, key)
            if own or device_type:
                return str(own or self.settings(device_type or "cpu")[key])
            return f"{GPU_DEFAULTS[key]} (GPU) / {CPU_DEFAULTS[key]} (CPU)"

        return (f"{self.targets()}, at batch {self.batch_size}, a {length('prompt_tokens')}-token prompt and "
                f"{length('new_tokens')} new tokens on the stage's device")

    def to_json(self, device_type: str) -> dict[str, Any]:
        s = self.settings(device_type)
        return {"decode_ms": self.decode_ms, "prefill_tokens_per_s": self.prefill_tokens_per_s,
                "batch_size": self.batch_size, "prompt_tokens": s["prompt_tokens"], "new_tokens": s["new_tokens"],
                "fit_shapes": self.fit_shapes}


def speed_budget_for(p: Any, eval_cfg: Any) -> SpeedBudget | None:
    """The SpeedBudget of a search [[prune]] table `p` (None without a speed target); the lengths and
    the measurement's rules default to [eval]'s speed keys (`eval_cfg`, None when absent)."""
    if p.target_decode_ms is None and p.target_prefill_tokens_per_s is None:
        return None
    ev = eval_cfg
    batch = p.speed_batch_size or (min(ev.speed_batch_sizes) if ev is not None and ev.speed_batch_sizes else 1)
    rules = {"repeats": ev.speed_repeats, "max_spread": ev.speed_max_spread,
             "max_seconds": ev.speed_max_seconds} if ev is not None else {}
    return SpeedBudget(p.target_decode_ms, p.target_prefill_tokens_per_s, batch,
                       p.speed_prompt_tokens or (ev.speed_prompt_tokens if ev is not None else None),
                       p.speed_new_tokens or (ev.speed_new_tokens if ev is not None else None),
                       p.speed_fit_shapes or FIT_SHAPES, **rules)
