"""A stand-in stage process for orchestration tests: same CLI shape and contract, no torch.

    python _pipeline_fake_stage.py <kind> FILE --stage S --runs-dir R [--gpus 0,1]

It writes the stage's output file, logs one metrics line per step, records when it ran
(<stage>/fake_times.jsonl), sleeps FAKE_SLEEP seconds, and fails once when FAKE_FAIL names it.
FAKE_VAL="stage:10.4,45.4" logs those validation losses for that stage, one per step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.config import load_experiment  # noqa: E402
from engine.contract import append_metrics  # noqa: E402
from engine.orchestration.stage_process import run_stage  # noqa: E402
from engine.stages import kind_of  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind")
    ap.add_argument("file")
    ap.add_argument("--stage", required=True)
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--gpus", default="")
    a = ap.parse_args()
    exp = load_experiment(a.file)
    exp.runs_dir = a.runs_dir

    def body(ctx):
        t0 = time.time()
        marker = ctx.dir / "fake_failed_once"
        if os.environ.get("FAKE_FAIL") == ctx.stage and not marker.exists():
            marker.write_text("x")
            raise RuntimeError("planted failure")
        if os.environ.get("FAKE_IGNORE_TERM") == ctx.stage:  # a stage slow to stop: only a kill ends it
            import signal

            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            (ctx.dir / "fake_ignoring_term").write_text("x")
        if os.environ.get("FAKE_USER_ERROR") == ctx.stage:
            from engine.errors import UserError

            raise UserError("data.seq_length: planted user error")
        steps = 4
        val_stage, _, val = os.environ.get("FAKE_VAL", "").partition(":")
        for step, loss in enumerate(val.split(",") if val_stage == ctx.stage else [], 1):
            append_metrics(ctx.layout.metrics_file(ctx.stage), {"step": step, "split": "val", "loss": float(loss)})
        for step in range(1, steps + 1):
            time.sleep(float(os.environ.get("FAKE_SLEEP", "0")) / steps)
            append_metrics(ctx.layout.metrics_file(ctx.stage), {"step": step, "split": "train", "loss": 5.0 / step})
            ctx.progress(step, total_steps=steps)
        out = ctx.dir / kind_of(ctx.stage).output
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")
        if out.name == "config.json":  # a model folder: its weights too (a run checks they are there)
            (out.parent / "model.safetensors").write_bytes(b"\x02" + b"\x00" * 7 + b"{}")
        with open(ctx.dir / "fake_times.jsonl", "a") as f:
            f.write(json.dumps({"start": t0, "end": time.time(), "gpus": a.gpus}) + "\n")
        print(f"fake {ctx.stage} done", flush=True)

    return run_stage(exp, a.stage, body)


if __name__ == "__main__":
    sys.exit(main())
