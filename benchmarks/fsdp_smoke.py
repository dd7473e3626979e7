"""End-to-end check of the GPU-only training paths (CI has no GPU): FSDP2 on 2 GPUs, and master
weights with gradient accumulation on 1 GPU.

Tiny Llama models, real stages through `accelerate launch -m engine`, global batch 8 of micro-batches
of 4 (2 GPUs: one micro-batch each, FSDP2; 1 GPU: 2 micro-batches summed in fp32 by MasterAdamW):
  1. finetune: SIGTERM mid-run -> cancelled + checkpoint (sharded under FSDP); run again
     -> resumes from it and finishes; the saved model loads with stock transformers.
  2. distill-<name> (under FSDP with the teacher sharded), student from a depth prune.
  3. the same finetune for a second loss curve: DDP next to FSDP (2 GPUs), or
     `master_weights = false` (fp32 weights under autocast) next to master weights (1 GPU).

    python benchmarks/fsdp_smoke.py WORKDIR [--processes 1]
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


PROCESSES = 2


def launch(toml: Path, kind: str, strategy: str, *sets: str, **kw) -> subprocess.Popen:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "NCCL_NVLS_ENABLE": "0"}
    multi = ["--multi_gpu"] if PROCESSES > 1 else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(PROCESSES), *multi,
           "--mixed_precision", "bf16", "--dynamo_backend", "no", "--main_process_port", "29555",
           "-m", "engine", kind, str(toml), "--set", f'launch.strategy="{strategy}"']
    for item in sets:
        cmd += ["--set", item]
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
    global PROCESSES
    args = sys.argv[1:]
    if "--processes" in args:
        i = args.index("--processes")
        PROCESSES = int(args[i + 1])
        del args[i:i + 2]
    strategy = "fsdp" if PROCESSES > 1 else "ddp"
    work = Path(args[0]).resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs = work / "runs"
    name = "fsdp" if PROCESSES > 1 else "master"
    toml = work / f"{name}.toml"
    toml.write_text(experiment_toml(name, runs, finetune=FT, prune=PRUNE, distill=DISTILL))
    write_prepared(runs / name / "prepare")
    stage = runs / name / "finetune"

    # 1) SIGTERM mid-run, then resume.
    p = launch(toml, "finetune", strategy)
    t0 = time.time()
    while max((r["step"] for r in steps(stage / "metrics.jsonl") if r["split"] == "train"), default=0) < 5:
        if p.poll() is not None or time.time() - t0 > 240:
            check(False, f"finetune {strategy} reached step 5 (rc {p.poll()})")
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGTERM)
    rc = p.wait(timeout=240)
    status = json.loads((stage / "status.json").read_text())
    t0 = time.time()  # (a one-process launcher exits at once; its child finishes the checkpoint)
    while status["state"] == "running" and time.time() - t0 < 120:
        time.sleep(0.2)
        status = json.loads((stage / "status.json").read_text())
    ckpts = sorted((stage / "checkpoints").glob("step-*"))
    check(status["state"] == "cancelled", f"SIGTERM -> cancelled (rc {rc}, state {status['state']})")
    check(bool(ckpts) and (ckpts[-1] / "trainer_state.json").exists(), f"checkpoint written: {ckpts}")
    p = launch(toml, "finetune", strategy, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.communicate(timeout=400)[0]
    check(p.returncode == 0 and "resumed from" in out, "resumed and finished\n" + out[-2500:])
    if PROCESSES == 1:
        check("fp32 master weights in the optimizer" in out, "one GPU, bf16: master weights in use")
    recs = [r for r in steps(stage / "metrics.jsonl") if r["split"] == "train"]
    check([r["step"] for r in recs] == list(range(1, 17)), "metrics steps 1..16 once each")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(stage / "model")
    check(model.config.num_hidden_layers == 4, f"{strategy} finetune model loads with transformers")
    first_curve = [r["loss"] for r in recs]

    # 2) distill with the teacher sharded too; the student is a depth prune made by hand.
    student = runs / name / "prune-half" / "model"
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    model.save_pretrained(student)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(stage / "model").save_pretrained(student)
    p = launch(toml, "distill", strategy, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.communicate(timeout=400)[0]
    check(p.returncode == 0, f"distill {strategy} finished\n" + out[-2500:])
    d = steps(runs / name / "distill-half" / "metrics.jsonl")
    val = [r["loss"] for r in d if r["split"] == "val"]
    check(len(val) == 3 and val[-1] < val[0], f"distill val loss fell: {val}")
    AutoModelForCausalLM.from_pretrained(runs / name / "distill-half" / "model")

    # 3) the same finetune another way: the loss curves should agree to bf16 precision.
    other, sets = ("ddp", ()) if PROCESSES > 1 else ("autocast", ("finetune.master_weights=false",))
    toml2 = work / f"{other}.toml"
    toml2.write_text(experiment_toml(other, runs, finetune=FT))
    write_prepared(runs / other / "prepare")
    p = launch(toml2, "finetune", "ddp", *sets, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.communicate(timeout=400)[0]
    check(p.returncode == 0, f"{other} finetune finished\n" + out[-2500:])
    curve = [r["loss"] for r in steps(runs / other / "finetune" / "metrics.jsonl") if r["split"] == "train"]
    first = "fsdp" if PROCESSES > 1 else "master weights"  # (the run named `name`)
    print(f"{first} loss:", [round(x, 4) for x in first_curve])
    print(f"{other} loss:", [round(x, 4) for x in curve])
    diff = max(abs(a - b) / b for a, b in zip(first_curve, curve, strict=True))
    check(diff < 0.03, f"{first} and {other} loss curves agree (max rel diff {diff:.4f})")

if __name__ == "__main__":
    main()
