"""One table per run directory: each stage's wall time, median tokens/s and MFU of the training steps,
peak GPU memory against the prediction, checkpoint write time; and the disk each output takes.

    python benchmarks/scale_summary.py RUN_DIR [RUN_DIR ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.contract import read_json, read_metrics  # noqa: E402


def _seconds(st: dict) -> float | None:
    try:
        a, b = datetime.fromisoformat(st["started_at"]), datetime.fromisoformat(st["ended_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return (b - a).total_seconds()


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def stage_row(stage_dir: Path) -> dict:
    st = read_json(stage_dir / "status.json") or {}
    metrics = read_metrics(stage_dir / "metrics.jsonl")[0]
    train = [m for m in metrics if m.get("split") == "train"]
    steady = train[len(train) // 5:] or train  # past the warm-up
    tps = [m["tokens_per_s"] for m in steady if m.get("tokens_per_s")]
    mfu = [m["mfu"] for m in steady if m.get("mfu")]
    vals = [round(m["loss"], 4) for m in metrics if m.get("split") == "val"]
    return {"stage": stage_dir.name, "state": st.get("state"), "seconds": _seconds(st),
            "steps": len(train), "tokens_per_s": statistics.median(tps) if tps else None,
            "mfu": statistics.median(mfu) if mfu else None, "memory": st.get("memory"),
            "checkpoint_s": st.get("checkpoint_s"), "resume_s": st.get("resume_s"), "val_losses": vals,
            "model_gib": _du(stage_dir / "model") / 2**30}


def f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for run in args.runs:
        for d in sorted(p for p in Path(run).iterdir() if (p / "status.json").exists()):
            rows.append({"run": Path(run).name, **stage_row(d)})
    for r in rows:
        mem = r["memory"] or {}
        print(f"{r['run']:<12} {r['stage']:<16} {r['state'] or '-':<10} {f(r['seconds'], '7.1f')} s  "
              f"{f(r['tokens_per_s'], '9.0f')} tok/s  MFU {f(r['mfu'], '6.1%')}  peak {f(mem.get('peak_gib'), '6.2f')} "
              f"GiB (predicted {f(mem.get('predicted_gib'), '6.2f')})  ckpt {f(r['checkpoint_s'], '5.1f')} s  resume {f(r['resume_s'], '5.1f')} s  "
              f"model {r['model_gib']:.1f} GiB  val {r['val_losses']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
