"""Issue 17 on the SmolLM2-135M shape: micro_batch_size "auto", and six students sharing one teacher.

Shapes (random weights, random tokens, seq 512): teacher = SmolLM2-135M (30 layers, hidden 576,
ffn 1536, 9 heads / 3 KV heads, head_dim 64, vocab 49152, tied embeddings); students = the same
with 15 layers. The engine's Trainer with compile on, bf16, master weights (as a distill stage).

    (a) micro-batch: global batch 128 x 512 tokens, micro_batch_size 16 (8 micro-batches a step)
        against "auto" (engine/training/micro_batch.py picks it): tokens/s, MFU, peak memory.
    (b) six students, micro-batch 32, global batch 128: one after another (each with the teacher
        forward, as six distill stages run today) against all six over one teacher forward per
        micro-batch (engine/training/shared_teacher.py): total wall time of the timed steps, and
        every student's losses in both (the same batches and initial weights: they should agree
        to bf16 noise).

Usage (one GPU, < 6 minutes):  python benchmarks/auto_batch_shared_teacher.py OUT_DIR
CPU smoke test:                python benchmarks/auto_batch_shared_teacher.py OUT_DIR --tiny
Writes OUT_DIR/auto_batch_shared_teacher.json and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from distill_throughput import memory_reset as reset_memory  # noqa: E402  (this folder)
from distill_throughput import peak_gib, sync  # noqa: E402
from model_shapes import SMOLLM2  # noqa: E402

TINY = dict(SMOLLM2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=1000)
STUDENTS = 6
LOSSES = ["forward_kl", "reverse_kl", "jsd", "forward_kl", "reverse_kl", "jsd"]  # six different recipes


def build(arch: dict, layers: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{**arch, "num_hidden_layers": layers})
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype)


def config(args, micro: int | str, loss: str = "forward_kl"):
    from engine.config import DistillConfig

    return DistillConfig(steps=1000, global_batch_size=args.global_batch, micro_batch_size=micro, lr=1e-4,
                         min_lr=1e-5, warmup_steps=0, compile=args.compile, loss=loss)


def windows(args, vocab: int, device: torch.device, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (args.global_batch, args.seq + 1), generator=g).to(device) for _ in range(n)]


def split(batch: torch.Tensor, micro: int) -> list[torch.Tensor]:
    return list(batch.split(micro))


def trainer_for(args, acc, arch, device, cfg, teacher, seed: int, log=lambda _m: None):
    from engine.training.stage_bodies import loss_spec
    from engine.training.step import Trainer

    student = build(arch, args.student_layers, torch.float32, device, seed)
    return Trainer(acc, student, cfg, loss_spec(cfg, arch["vocab_size"]), teacher, seq_length=args.seq, log=log)


def micro_variant(args, acc, arch, device, teacher, micro: int | str, data: list[torch.Tensor]) -> dict:
    """Tokens/s, MFU and peak memory of one student at this micro-batch (global batch fixed)."""
    from engine.training.setup import peak_flops

    notes: list[str] = []
    reset_memory(device)
    trainer = trainer_for(args, acc, arch, device, config(args, micro), teacher, seed=1, log=notes.append)
    pending, losses = [], []

    def step(i: int) -> None:
        pending.append(trainer.launch(split(data[i % len(data)], trainer.micro), 1e-4))
        while len(pending) > 1:
            losses.append(pending.pop(0).result().loss)

    for i in range(args.warmup):
        step(i)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    sync(device)
    sec = (time.perf_counter() - t0) / args.steps
    tps = args.global_batch * args.seq / sec
    peak = peak_flops(device)
    out = {"micro_batch_size": micro, "picked": trainer.micro, "accumulation": trainer.accumulation,
           "tokens_per_s": tps, "mfu": tps * trainer.flops_per_token / peak if peak else None,
           "peak_gib": peak_gib(device), "search": notes, "loss_last": losses[-1] if losses else None}
    trainer = None
    acc.free_memory()
    return out


def six_students(args, acc, arch, device, teacher_model, data: list[torch.Tensor]) -> dict:
    """Six students one after another (each runs the teacher) against six over one teacher forward."""
    from engine.training.shared_teacher import launch_shared
    from engine.training.step import shared_teacher

    micro = args.six_micro
    total_steps = args.warmup + args.six_steps

    def run_steps(launch_one, n_students: int) -> tuple[float, list[list[float]]]:
        losses: list[list[float]] = [[] for _ in range(n_students)]
        pending: list[list] = []
        elapsed = 0.0
        for i in range(total_steps):
            if i == args.warmup:
                sync(device)
                t0 = time.perf_counter()
            pending.append(launch_one(split(data[i % len(data)], micro)))
            while len(pending) > 1:
                for k, p in enumerate(pending.pop(0)):
                    losses[k].append(p.result().loss)
        for k, p in enumerate(pending.pop()):
            losses[k].append(p.result().loss)
        sync(device)
        elapsed = time.perf_counter() - t0
        return elapsed, losses

    # one after another: each student with the teacher forward of its own (the distill stages today)
    reset_memory(device)
    seq_time, seq_losses, seq_peak = 0.0, [], 0.0
    for k in range(STUDENTS):
        trainer = trainer_for(args, acc, arch, device, config(args, micro, LOSSES[k]), teacher_model, seed=10 + k)
        sec, losses = run_steps(lambda b, t=trainer: [t.launch(b, 1e-4)], 1)
        seq_time += sec
        seq_losses.append(losses[0])
        seq_peak = max(seq_peak, peak_gib(device) or 0.0)
        trainer = None
        acc.free_memory()
        reset_memory(device)

    # all six over one teacher forward per micro-batch
    one = shared_teacher(acc, teacher_model, [None], compile_=args.compile)
    trainers = [trainer_for(args, acc, arch, device, config(args, micro, LOSSES[k]), one, seed=10 + k)
                for k in range(STUDENTS)]
    shared_time, shared_losses = run_steps(lambda b: launch_shared(trainers, b, [1e-4] * STUDENTS), STUDENTS)
    shared_peak = peak_gib(device)
    trainers = None
    acc.free_memory()
    diff = max(abs(a - b) for s, t in zip(seq_losses, shared_losses, strict=True) for a, b in zip(s, t, strict=True))
    return {"micro_batch_size": micro, "timed_steps": args.six_steps, "warmup_steps": args.warmup,
            "sequential_s": seq_time, "shared_s": shared_time, "ratio": shared_time / seq_time,
            "sequential_peak_gib": seq_peak or None, "shared_peak_gib": shared_peak,
            "sequential_losses": seq_losses, "shared_losses": shared_losses, "max_loss_diff": diff}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--global-batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps of (a)")
    ap.add_argument("--six-steps", type=int, default=8, help="timed steps of (b)")
    ap.add_argument("--six-micro", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--teacher-layers", type=int, default=30)
    ap.add_argument("--student-layers", type=int, default=15)
    args = ap.parse_args()
    if args.out_dir.exists() and not args.out_dir.is_dir():
        print(f"error: {args.out_dir} is a file; give a directory", file=sys.stderr)
        return 2
    if args.global_batch % args.six_micro or args.global_batch % 16:
        print("error: --global-batch must be a multiple of 16 and of --six-micro", file=sys.stderr)
        return 2
    from engine.training.setup import make_accelerator

    arch = SMOLLM2
    if args.tiny:
        arch = TINY
        args.seq, args.global_batch, args.six_micro = 32, 16, 8
        args.steps, args.six_steps, args.warmup, args.teacher_layers, args.student_layers = 2, 2, 1, 4, 2
    acc = make_accelerator("ddp", "bf16")
    device = acc.device
    args.compile = device.type == "cuda"
    teacher_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    teacher = build(arch, args.teacher_layers, teacher_dtype, device, 0)
    data = windows(args, arch["vocab_size"], device, 4)

    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "date": time.strftime("%Y-%m-%d"), "seq": args.seq, "global_batch": args.global_batch,
              "teacher_layers": args.teacher_layers, "student_layers": args.student_layers, "arch": arch}
    t0 = time.perf_counter()
    result["micro_batch"] = [micro_variant(args, acc, arch, device, teacher, m, data) for m in (16, "auto")]
    result["six_students"] = six_students(args, acc, arch, device, teacher, data)
    result["wall_s"] = time.perf_counter() - t0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "auto_batch_shared_teacher.json").write_text(json.dumps(result, indent=1))

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    print(f"\n{result['device']}, seq {args.seq}, global batch {args.global_batch}, "
          f"teacher {args.teacher_layers} -> student {args.student_layers} layers, wall {result['wall_s']:.0f} s")
    print("| micro_batch_size | picked | tokens/s | MFU | peak GiB |\n| --- | --- | --- | --- | --- |")
    for r in result["micro_batch"]:
        print(f"| {r['micro_batch_size']} | {r['picked']} | {r['tokens_per_s']:,.0f} | {f(r['mfu'], '.1%')} | "
              f"{f(r['peak_gib'], '.1f')} |")
    s = result["six_students"]
    print(f"| six students (micro {s['micro_batch_size']}, {s['timed_steps']} steps) | one after another "
          f"{s['sequential_s']:.1f} s | shared teacher {s['shared_s']:.1f} s | ratio {s['ratio']:.2f} | "
          f"max loss diff {s['max_loss_diff']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
