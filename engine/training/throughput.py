"""Training throughput: tokens/s over the steps since the last measurement, timed by their own work.

The loop reads each step's statistics one step behind the GPU and drains two at once before a validation
or a checkpoint, so the host time between two reads is not a step's time (it made the step before a
validation read ~100x too fast, and the step after it too slow). Instead each step is timed where it
runs: on CUDA by timing events recorded in the stream around its launched work (read once the step is
finished, so no extra host sync), on the CPU (where a step runs while it is launched) by the host clock
around the launch. A step's time runs from the end of the step before it, which counts the host's
share of a busy loop too, except after `pause()` (a validation, a checkpoint, a resume): then it runs
from its own start, so the pause is nobody's step time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Mark = Any  # a host time in seconds (CPU) or a recorded torch.cuda.Event (CUDA)


class StepTimes:
    """Per-step times and the tokens/s of the steps finished since the last `rate()`."""

    def __init__(self, cuda: bool, clock: Callable[[], float]):
        self.cuda, self.clock = cuda, clock
        self.prev_end: Mark | None = None  # the end of the last launched step (None after a pause)
        self.spans: dict[int, tuple[Mark, Mark]] = {}  # launched steps not finished yet: (from, to)
        self.seconds = 0.0  # time of the steps finished since the last rate()
        self.steps = 0
        self.step_s: float | None = None  # recent seconds per step (a moving mean): a cancel's grace

    def _mark(self) -> Mark:
        if not self.cuda:
            return self.clock()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> Mark:
        """Before a step's work is launched (its batches included)."""
        return self._mark()

    def launched(self, step: int, start: Mark) -> None:
        """After step `step`'s work is launched."""
        end = self._mark()
        self.spans[step] = (start if self.prev_end is None else self.prev_end, end)
        self.prev_end = end

    def pause(self) -> None:
        """Work that is no training step follows (validation, a checkpoint): the next step starts afresh."""
        self.prev_end = None

    def finished(self, step: int) -> None:
        """Step `step`'s result has been read (its work is done)."""
        start, end = self.spans.pop(step)
        if self.cuda:
            end.synchronize()  # recorded right after the step's statistics were: done or nearly
            took = start.elapsed_time(end) / 1000.0
        else:
            took = end - start
        self.seconds += took
        self.steps += 1
        self.step_s = took if self.step_s is None else max(took, 0.8 * self.step_s + 0.2 * took)

    def rate(self, tokens_per_step: int) -> float:
        """Tokens/s of the steps finished since the last call; starts the next measurement."""
        tps = tokens_per_step * self.steps / max(self.seconds, 1e-9)
        self.seconds, self.steps = 0.0, 0
        return tps
