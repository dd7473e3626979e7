"""On a GPU machine: the GPUs screen with the real NVML probe (no fake), headless at 80x24.

    python3 benchmarks/tui_gpu_check.py   # prints the probe's samples and the screen's text
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def screen_text(app) -> str:
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())


async def main() -> int:
    from app.data.gpus import NvmlProbe
    from app.main import SlimlabApp
    from engine.contract import StageStatus

    t = time.perf_counter()
    probe = NvmlProbe.open()
    print(f"NvmlProbe.open: {time.perf_counter() - t:.3f}s -> {probe!r}")
    if probe is None:
        print("no NVML/GPU here: the GPUs screen stays hidden")
        return 1
    for s in probe.sample():
        print(s)
    with tempfile.TemporaryDirectory() as td:
        runs = Path(td) / "runs"
        st = StageStatus(runs / "gpu-run" / "finetune", "finetune")
        (runs / "gpu-run").mkdir(parents=True, exist_ok=True)
        (runs / "gpu-run" / "experiment.toml").write_text('name = "gpu-run"\n[finetune]\nsteps = 10\n')
        st.start(total_steps=10, gpus=[0])
        app = SlimlabApp(runs_dir=runs)  # gpu_probe="auto": the real NVML probe
        async with app.run_test(size=(80, 24)) as pilot:
            t0 = time.monotonic()
            while app.gpu_probe is None and time.monotonic() - t0 < 10:
                await pilot.pause(0.1)
            await pilot.press("4")
            t0 = time.monotonic()
            while time.monotonic() - t0 < 10:
                await pilot.pause(0.2)
                if type(app.screen).__name__ == "GpuScreen" and app.screen.query_one("#gpu-table").row_count:
                    break
            await pilot.pause(1.2)
            print(screen_text(app))
            ok = type(app.screen).__name__ == "GpuScreen" and "gpu-run/finetune" in screen_text(app)
        st.finish("succeeded")
    print("GPU screen with real NVML:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
