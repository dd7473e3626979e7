"""End-to-end check of the FSDP2 path on 2 GPUs (accelerate does FSDP only on GPUs, so CI cannot).

Tiny Llama models, real stages through `accelerate launch -m engine`:
  1. finetune with strategy "fsdp": SIGTERM mid-run -> cancelled + sharded checkpoint; run again
     -> resumes from it and finishes; the saved model loads with stock transformers.
  2. distill-<name> with strategy "fsdp" (teacher sharded, student from a depth prune).
  3. the same finetune with "ddp", for the loss curve next to FSDP's.

    python benchmarks/fsdp_smoke.py WORKDIR
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _train_util import FINETUNE, experiment_toml, write_prepared  # noqa: E402

FT = FINETUNE.replace("steps = 12", "steps = 16").replace("checkpoint_interval = 4", "checkpoint_interval = 100")
DISTILL = """
[distill]
steps = 6
global_batch_size = 8
micro_batch_size = 4
lr = 3e-3
val_interval = 3
val_batches = 2
loss = "forward_kl"
temperature = 2.0
ce_weight = 0.1
"""
PRUNE = '[[prune]]\nname = "half"\nmethod = "depth"\ndrop_layers = [2, 3]\n'


def launch(toml: Path, kind: str, strategy: str, **kw) -> subprocess.Popen:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "NCCL_NVLS_ENABLE": "0"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
           "--mixed_precision", "bf16", "--dynamo_backend", "no", "--main_process_port", "29555",
           "-m", "engine", kind, str(toml), "--set", f'launch.strategy="{strategy}"']
    return subprocess.Popen(cmd, env=env, start_new_session=True, text=True, **kw)


def steps(metrics: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return []


def check(cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        sys.exit(1)


def main() -> None:
    work = Path(sys.argv[1]).resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs = work / "runs"
    toml = work / "fsdp.toml"
    toml.write_text(experiment_toml("fsdp", runs, finetune=FT, prune=PRUNE, distill=DISTILL))
    write_prepared(runs / "fsdp" / "prepare")
    stage = runs / "fsdp" / "finetune"

    # 1) SIGTERM mid-run, then resume.
    p = launch(toml, "finetune", "fsdp")
    t0 = time.time()
    while max((r["step"] for r in steps(stage / "metrics.jsonl") if r["split"] == "train"), default=0) < 5:
        if p.poll() is not None or time.time() - t0 > 240:
            check(False, f"finetune fsdp reached step 5 (rc {p.poll()})")
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGTERM)
    rc = p.wait(timeout=240)
    status = json.loads((stage / "status.json").read_text())
    ckpts = sorted((stage / "checkpoints").glob("step-*"))
    check(status["state"] == "cancelled", f"SIGTERM -> cancelled (rc {rc}, state {status['state']})")
    check(bool(ckpts) and (ckpts[-1] / "trainer_state.json").exists(), f"checkpoint written: {ckpts}")
    p = launch(toml, "finetune", "fsdp", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.communicate(timeout=400)[0]
    check(p.returncode == 0 and "resumed from" in out, "resumed and finished\n" + out[-2500:])
    recs = [r for r in steps(stage / "metrics.jsonl") if r["split"] == "train"]
    check([r["step"] for r in recs] == list(range(1, 17)), "metrics steps 1..16 once each")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(stage / "model")
    check(model.config.num_hidden_layers == 4, "fsdp finetune model loads with transformers")
    fsdp_curve = [r["loss"] for r in recs]

    # 2) distill with the teacher sharded too; the student is a depth prune made by hand.
    student = runs / "fsdp" / "prune-half" / "model"
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    model.save_pretrained(student)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(stage / "model").save_pretrained(student)
    p = launch(toml, "distill", "fsdp", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.communicate(timeout=400)[0]
    check(p.returncode == 0, "distill fsdp finished\n" + out[-2500:])
    d = steps(runs / "fsdp" / "distill-half" / "metrics.jsonl")
    val = [r["loss"] for r in d if r["split"] == "val"]
    check(len(val) == 3 and val[-1] < val[0], f"distill val loss fell: {val}")
    AutoModelForCausalLM.from_pretrained(runs / "fsdp" / "distill-half" / "model")

    # 3) the same finetune on DDP: the loss curves should agree to bf16 precision.
    toml2 = work / "ddp.toml"
    toml2.write_text(experiment_toml("ddp", runs, finetune=FT))
    write_prepared(runs / "ddp" / "prepare")
    p = launch(toml2, "finetune", "ddp", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.communicate(timeout=400)[0]
    check(p.returncode == 0, "ddp finetune finished\n" + out[-2500:])
    ddp_curve = [r["loss"] for r in steps(runs / "ddp" / "finetune" / "metrics.jsonl") if r["split"] == "train"]
    print("fsdp loss:", [round(x, 4) for x in fsdp_curve])
    print("ddp  loss:", [round(x, 4) for x in ddp_curve])
    diff = max(abs(a - b) / b for a, b in zip(fsdp_curve, ddp_curve, strict=True))
    check(diff < 0.03, f"fsdp and ddp loss curves agree (max rel diff {diff:.4f})")


if __name__ == "__main__":
    main()
