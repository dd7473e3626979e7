"""What applying keys strictly in order costs (issue 24): the TUI headless (Textual's Pilot, 80x24),
Compose open; a burst of keys is queued at once (as one terminal read delivers them) and the time
until the last one took effect is measured, with `InOrderKeys` (each key handled to its end before
the next) and with Textual's own dispatch (the same app, `App.on_event` called directly).

Bursts: 200 letters into one field; 40 x (`1`, Tab) across the finetune fields; and the same with
the app's answer checked (plain Textual puts the Tabs after the digits, so its fields read wrong).
A 10 ms asyncio timer records the event loop's longest stall during each burst.

    python3 benchmarks/tui_key_bursts.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual import events  # noqa: E402
from textual.app import App  # noqa: E402

from app.main import SlimlabApp  # noqa: E402

FIELDS = ("#f-finetune-steps", "#f-finetune-global-batch-size", "#f-finetune-micro-batch-size",
          "#f-finetune-lr", "#f-finetune-min-lr",
          "#f-finetune-warmup-steps", "#f-finetune-val-interval", "#f-finetune-checkpoint-interval")


class PlainKeys(SlimlabApp):
    """The app with Textual's own key dispatch (InOrderKeys bypassed)."""

    async def on_event(self, event: events.Event) -> None:
        await App.on_event(self, event)


def _post(app: App, keys: list[str]) -> None:
    chars = {"tab": "\t"}
    for k in keys:
        app.post_message(events.Key(k, k if len(k) == 1 else chars.get(k)))


async def _measure(app_cls: type[SlimlabApp], work: Path) -> dict[str, float | bool]:
    app = app_cls(runs_dir=work / "runs", experiments_dir=work / "experiments", gpu_probe=None)
    out: dict[str, float | bool] = {}
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        while type(app.screen).__name__ != "ComposeScreen" or not app.screen.form_ready.is_set():
            await pilot.pause(0.02)
        screen = app.screen
        lag = [0.0]

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                lag[0] = max(lag[0], now - last - 0.01)
                last = now

        tick = asyncio.create_task(ticker())
        name = screen.query_one("#f-name")
        name.focus()
        await pilot.press("ctrl+u")
        lag[0] = 0.0
        t0 = time.perf_counter()
        _post(app, ["a"] * 200)
        while len(name.value) < 200:
            await asyncio.sleep(0.001)
        out["letters_200_s"] = time.perf_counter() - t0
        out["letters_max_lag_ms"] = lag[0] * 1000

        first = screen.query_one(FIELDS[0])
        first.focus()
        await pilot.pause()
        keys: list[str] = []
        for _ in FIELDS:
            keys += ["ctrl+u", "1", "tab"]
        lag[0] = 0.0
        t0 = time.perf_counter()
        _post(app, keys)
        done = screen.query_one("#f-finetune-checkpoint-interval")
        deadline = t0 + 10
        while time.perf_counter() < deadline and not (app.focused is not done and done.value == "1"):
            await asyncio.sleep(0.001)
        out["tabs_burst_s"] = time.perf_counter() - t0
        out["tabs_max_lag_ms"] = lag[0] * 1000
        for _ in range(20):
            await pilot.pause()
        out["tabs_fields_right"] = all(screen.query_one(f).value == "1" for f in FIELDS)
        tick.cancel()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="slimlab-keys-"))
    (work / "runs").mkdir()
    results: dict[str, list[dict]] = {"textual": [], "in-order": []}
    for _ in range(args.repeat):  # alternated, so drift in the machine's speed hits both alike
        results["textual"].append(asyncio.run(_measure(PlainKeys, work)))
        results["in-order"].append(asyncio.run(_measure(SlimlabApp, work)))
    for mode, runs in results.items():
        med = {k: statistics.median(float(r[k]) for r in runs) for k in runs[0] if k != "tabs_fields_right"}
        right = sum(bool(r["tabs_fields_right"]) for r in runs)
        print(f"{mode:9s} 200 letters {med['letters_200_s'] * 1000:7.1f} ms "
              f"({med['letters_200_s'] / 200 * 1e6:5.0f} us/key, max stall {med['letters_max_lag_ms']:5.1f} ms); "
              f"{len(FIELDS)} x (ctrl+u 1 Tab) {med['tabs_burst_s'] * 1000:6.1f} ms "
              f"(max stall {med['tabs_max_lag_ms']:5.1f} ms), fields right in {right}/{len(runs)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
