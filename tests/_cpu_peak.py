"""The peak of the bytes torch's CPU allocator hands out while a function runs, from the profiler's memory
events (what torch.cuda.max_memory_allocated gives on a GPU, which the CPU has no counter for).

`prof.profiler.kineto_results` is the profiler's raw event list: a private attribute (torch 2.x), fenced
here. FunctionEvent lists (`prof.events()`) drop allocations that no operator claims, so the raw events are
needed: allocations and frees, in order."""

from __future__ import annotations

from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile


def cpu_step_peak(fn: Callable[[], object]) -> tuple[int, int]:
    """(the highest live total above the start, the total at the end), in bytes, of `fn`'s allocations."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    raw = getattr(prof.profiler, "kineto_results", None)
    if raw is None:
        raise RuntimeError("torch.profiler no longer exposes kineto_results: update tests/_cpu_peak.py")
    events = sorted((e.start_ns(), e.nbytes()) for e in raw.events() if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return peak, live
