"""GPU utilisation through NVML (nvidia-ml-py). Absent library, driver or GPU -> no probe,
and the TUI hides its GPUs screen."""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.contract import RunInfo


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    util: int | None  # percent
    mem_used: int  # bytes
    mem_total: int
    temperature: int | None = None  # Celsius
    power_w: float | None = None
    pids: tuple[int, ...] = ()


class NvmlProbe:
    """Reads every GPU through NVML; construct with `NvmlProbe.open()`, which returns None
    when NVML or GPUs are missing."""

    why_not = ""  # why the last open() returned None, e.g. "NVMLError_LibraryNotFound: ..." (said to the user)

    def __init__(self, nvml) -> None:
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    @classmethod
    def open(cls) -> NvmlProbe | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            probe = cls(pynvml)
        except Exception as e:  # no library, no driver, no permission: no GPU panel
            cls.why_not = f"NVML: {type(e).__name__}: {e}"
            return None
        cls.why_not = "" if probe._handles else "NVML: no GPU found"
        return probe if probe._handles else None

    def sample(self) -> list[GpuSample]:
        n = self._nvml
        out = []
        for i, h in enumerate(self._handles):
            name = n.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else str(name)
            mem = n.nvmlDeviceGetMemoryInfo(h)
            out.append(GpuSample(
                index=i, name=name,
                util=_try(lambda h=h: int(n.nvmlDeviceGetUtilizationRates(h).gpu)),
                mem_used=int(mem.used), mem_total=int(mem.total),
                temperature=_try(lambda h=h: int(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))),
                power_w=_try(lambda h=h: n.nvmlDeviceGetPowerUsage(h) / 1000.0),
                pids=tuple(p.pid for p in (_try(lambda h=h: n.nvmlDeviceGetComputeRunningProcesses(h)) or ())),
            ))
        return out


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver on this machine (its device node, or nvidia-smi): a cheap look, no NVML (Compose
    asks it for a new experiment's dtype: float32 without one, where bfloat16 only made a CPU run slow)."""
    import shutil
    from pathlib import Path

    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


def _try(fn):
    try:
        return fn()
    except Exception:  # a field this GPU/driver does not support
        return None


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def gpu_owners(samples: list[GpuSample], runs: list[RunInfo]) -> dict[int, str]:
    """GPU index -> "run/stage" using it: by process group of its processes, else by the
    GPUs a running stage declared in status.json."""
    running = [(r, s) for r in runs for s in r.stages if s.state == "running"]
    by_pgid = {s.pgid: f"{r.name}/{s.name}" for r, s in running if s.pgid}
    owners: dict[int, str] = {}
    for g in samples:
        for pid in g.pids:
            owner = by_pgid.get(_pgid(pid))
            if owner:
                owners[g.index] = owner
                break
    for r, s in running:
        for idx in s.gpus:
            owners.setdefault(idx, f"{r.name}/{s.name}")
    return owners
