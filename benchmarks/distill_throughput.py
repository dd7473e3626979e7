"""Distillation throughput: the engine's training step against a naive KD loop.

Teacher: Llama-shaped, 16 layers, hidden 2048, ffn 8192, 32 heads / 8 KV heads, head_dim 64,
vocab 128256, tied embeddings (~1.24B parameters); student: the same with 8 layers (~0.75B).
Random weights, random tokens, batch 4 x 2048.

Both sides use the same precision: the student holds fp32 master weights and fp32 AdamW state
(fused AdamW) and runs its matrix products in bf16 (autocast); the teacher is held in bf16.

    naive   teacher forward under no_grad -> full logits; student forward + backward;
            F.kl_div on full fp32 log-softmaxes of both; fused AdamW step.
    engine  engine.training.step.Trainer.launch, the code a distill stage runs: final hidden states of both
            models, the chunked KD loss fused with the LM heads (engine/distill/losses.py),
            the global gradient norm (clipping is folded into the fused AdamW step), the finite-loss
            check on the device, fused AdamW.
            `-compile`: torch.compile of the decoder layers and of the loss chunk kernel
            ([distill].compile = true).
            `-liger`: Liger-Kernel's Triton RMSNorm, SwiGLU and RoPE in student and teacher
            ([distill].kernels = "liger", engine/models/liger.py); `-liger-norope`: without its RoPE
            (which is a graph break per layer under compile).

FLOPs per token for MFU = 2 N_teacher + 6 N_student, N = parameters of every matrix product
(attention and MLP projections plus the LM head, which is tied to the embedding; the embedding
lookup, norms and attention scores are not counted): N_teacher = 1,235,746,816,
N_student = 749,207,552 -> 6.967 GFLOP/token; peak 989 TFLOP/s (dense bf16, H100/H200).

Results: benchmarks/RESULTS.md ("Distillation throughput"); the device calls: benchmarks/distill_gpu.sh.

Usage (one GPU):  python benchmarks/distill_throughput.py --variants naive,engine-compile,engine-compile-accum4
Multi-GPU:        accelerate launch --num_processes 2 benchmarks/distill_throughput.py \
                      --strategy ddp --variants engine-compile
CPU smoke test:   python benchmarks/distill_throughput.py --tiny --variants naive,engine --steps 2
SmolLM2-135M shape (teacher 30 x 576, ffn 1536, 9/3 heads, vocab 49152 -> 15 layers; batch 64 x 512):
                  python benchmarks/distill_throughput.py --shape smollm2 --variants naive,engine-compile
Liger (pip install "slimlab[liger]"; CUDA):  --variants naive,engine-compile,engine-compile-liger,engine-liger
Llama-3.1-8B teacher -> 4.5B students (issue 21; one 80 GB GPU, the recipe of experiments/llama31-8b-one-gpu.toml):
                  --shape 8b-width --variants engine-compile-chunk512-gc-bf16states,engine-compile-chunk512-gc0.9-bf16states
Memory options (issue 21), as suffixes:  --variants engine-compile,engine-compile-gc,engine-compile-bf16states,
                  engine-compile-autocast (fp32 weights under autocast: no bf16 model + fp32 masters split),
                  engine-compile-bf16states-sr (master_weights = "stochastic": no fp32 masters),
                  engine-compile-int8states-sr (optimizer_states = "int8": torchao's 8-bit moments),
                  engine-compile-int8fused-sr (the same, updated in one kernel: adamw8_triton.py)
Float8 matmuls (Ada/Hopper; torchao):  --variants engine-compile-bf16states-sr,engine-compile-bf16states-sr-f8
A variant that fails prints its error and the others still run.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from model_shapes import LLAMA31_8B, LLAMA_1B, SMOLLM2  # noqa: E402  (this folder)

PEAK = 989e12
ARCH = LLAMA_1B
# --shape: arch, teacher layers, student layers, batch, seq (flags given on the command line win)
SHAPES = {"1b": (ARCH, 16, 8, 4, 2048), "smollm2": (SMOLLM2, 30, 15, 64, 512),
          "8b-depth": (LLAMA31_8B, 32, 16, 4, 4096), "8b-width": (LLAMA31_8B, 32, 32, 4, 4096)}
# the student's own widths where they differ from the teacher's (issue 21's width student: 4.5B)
STUDENT_WIDTHS = {"8b-width": dict(hidden_size=3072, intermediate_size=9216)}
TINY = dict(ARCH, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=1000)


def build(arch: dict, layers: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{**arch, "num_hidden_layers": layers})
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(step, n_warmup: int, n_steps: int, device: torch.device) -> tuple[float, list[float]]:
    """Seconds per step: n_steps back to back after warm-up, between two device syncs (host clock),
    so that a loop which keeps the GPU busy across steps gets the credit for it."""
    for _ in range(n_warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step()
    sync(device)
    total = time.perf_counter() - t0
    return total / n_steps, [total]


def run_naive(args, arch, device, batches) -> dict:
    teacher = build(arch, args.teacher_layers, torch.bfloat16 if device.type == "cuda" else torch.float32,
                    device, 0).eval().requires_grad_(False)
    student = build(dict(arch, **STUDENT_WIDTHS.get(args.shape, {})), args.student_layers, torch.float32, device, 1).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=device.type == "cuda")
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    it = iter(range(10**9))

    def step() -> None:
        x = batches[next(it) % len(batches)]
        inp = x[:, :-1]
        with torch.no_grad(), torch.autocast(**amp):
            t_logits = teacher(input_ids=inp, use_cache=False).logits
        with torch.autocast(**amp):
            s_logits = student(input_ids=inp, use_cache=False).logits
        loss = F.kl_div(F.log_softmax(s_logits.float(), -1).flatten(0, 1),
                        F.log_softmax(t_logits.float(), -1).flatten(0, 1),
                        log_target=True, reduction="batchmean")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    memory_reset(device)
    sec, times = timed(step, args.warmup, args.steps, device)
    out = {"peak_gib": peak_gib(device), "sec_per_step": sec, "times": times}
    teacher = student = opt = None  # free the models before the next variant
    return out


def run_engine(args, arch, device, batches, acc, *, compile: bool, chunk: int, accum: int,
               profile: bool = False, hf_mask: bool = False, master: bool | str | None = None,
               kernels: str = "", name: str = "", tgraph: bool = False, gc: bool | float = False,
               states: str = "float32", float8: bool = False) -> dict:
    from engine.config import DistillConfig
    from engine.training.stage_bodies import loss_spec
    from engine.training.step import Trainer

    teacher = build(arch, args.teacher_layers, torch.bfloat16 if device.type == "cuda" else torch.float32,
                    device, 0)
    student = build(dict(arch, **STUDENT_WIDTHS.get(args.shape, {})), args.student_layers, torch.float32, device, 1)
    if kernels:  # "liger" | "liger-norope", as a distill stage's kernels = "liger" does (both models)
        from engine.models.liger import apply_liger

        for model in (teacher, student):
            apply_liger(model, rope=kernels == "liger")
    micro = batches[0].shape[0]
    # "stochastic": the config's key, so that the Trainer applies it where masters apply (else fp32 weights)
    mode = "stochastic" if master == "stochastic" else True
    master = None if master == "stochastic" else master
    cfg = DistillConfig(steps=1000, global_batch_size=micro * accum * acc.num_processes, micro_batch_size=micro,
                        lr=1e-4, min_lr=1e-5, warmup_steps=0, compile=compile, chunk_tokens=chunk,
                        teacher_cuda_graph=tgraph, gradient_checkpointing=gc, optimizer_states=states,
                        master_weights=mode, float8=float8)
    if hf_mask:  # before engine/models/attention.py: transformers' own mask path (2 host syncs per step)
        from engine.training import step as trainer_module

        keep, trainer_module.use_causal_sdpa = trainer_module.use_causal_sdpa, lambda model: False
    try:
        trainer = Trainer(acc, student, cfg, loss_spec(cfg, arch["vocab_size"]), teacher, master_weights=master,
                          log=lambda msg: print(f"  {name}: {msg}", flush=True))
    finally:
        if hf_mask:
            trainer_module.use_causal_sdpa = keep
    del teacher, student
    it = iter(range(10**9))
    losses = []
    pending = []

    def step() -> None:
        # As the engine's loop does: launch step i+1, then read step i (no host sync in between).
        group = [batches[(next(it)) % len(batches)] for _ in range(accum)]
        pending.append(trainer.launch(group, 1e-4))
        while len(pending) > 1:
            losses.append(pending.pop(0).result().loss)

    memory_reset(device)
    sec, times = timed(step, args.warmup, args.steps, device)
    out = {"peak_gib": peak_gib(device), "sec_per_step": sec, "times": times, "loss_first_last": [losses[0], losses[-1]],
           "flops_per_token": trainer.flops_per_token}
    if profile:
        out["profile_ms_per_step"] = profile_steps(step, device, os.path.dirname(args.json) if args.json else None,
                                                   name)
    trainer.release()  # the accelerator is shared by the variants: its hooks would keep this one alive
    trainer = None
    acc.free_memory()
    return out


def check_fused_loss(device: torch.device) -> dict:
    """The fused loss on this device (bf16 autocast, 3 chunks) against a float64 reference."""
    from engine.distill import losses
    from engine.distill.losses import LossSpec, fused_linear_loss

    g = torch.Generator(device=device).manual_seed(0)
    n, h, v = 3000, 256, 5000
    hs = torch.randn(n, h, device=device, generator=g, requires_grad=True)
    ws = (torch.randn(v, h, device=device, generator=g) * 0.05).requires_grad_()
    ht = torch.randn(n, h, device=device, generator=g)
    wt = torch.randn(v, h, device=device, generator=g) * 0.05
    labels = torch.randint(0, v, (n,), device=device, generator=g)
    out = {}
    # name: (kind, ce_weight, compile); "forward_kl_compiled" is the Triton kernel's case on CUDA
    cases = {"forward_kl": ("forward_kl", 0.3, False), "reverse_kl": ("reverse_kl", 0.3, False),
             "jsd": ("jsd", 0.3, False), "forward_kl_compiled": ("forward_kl", 0.0, True)}
    for name, (kind, ce_weight, compile_) in cases.items():
        spec = LossSpec(kind, temperature=2.0, ce_weight=ce_weight, chunk_tokens=1024)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _, _ = fused_linear_loss(hs, ws, labels, spec, ht, wt, compile=compile_ and device.type == "cuda")
        gh, gw = torch.autograd.grad(loss, (hs, ws))
        ref_spec = LossSpec(kind, temperature=2.0, ce_weight=ce_weight, chunk_tokens=n)
        h64, w64 = hs.detach().double().requires_grad_(), ws.detach().double().requires_grad_()
        ref, _, _ = fused_linear_loss(h64, w64, labels, ref_spec, ht.double(), wt.double())
        rh, rw = torch.autograd.grad(ref, (h64, w64))

        def rel(a, b):
            return float((a.double() - b).norm() / b.norm())

        out[name] = {"loss": rel(loss.detach(), ref.detach()), "grad_h": rel(gh, rh), "grad_w": rel(gw, rw)}
    out["mixed_dtype_addmm"] = losses._MIXED_ADDMM.get("ok")
    return out


def check_master_adamw(device: torch.device, steps: int = 6) -> dict:
    """MasterAdamW (its Triton kernel on CUDA) against fused fp32 AdamW fed the same bf16 gradients, with
    clipping (`grad_scale`) and one skipped step (`found_inf`): max |difference| of the weights."""
    from engine.training.master_adamw import MasterAdamW

    g = torch.Generator(device=device).manual_seed(0)
    shapes = [(512, 256), (1000, 64), (256,), (3, 5, 7)]
    ref = [torch.randn(s, device=device, generator=g).requires_grad_() for s in shapes]
    mine = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    fused = torch.optim.AdamW(ref, fused=True, **kw)
    master = MasterAdamW(mine, fused=device.type == "cuda", **kw)
    for i in range(steps):
        grads = [torch.randn(s, device=device, generator=g).bfloat16() for s in shapes]
        scale = torch.tensor(1.0 + i, device=device)
        skip = torch.tensor(float(i == 2), device=device)
        for r, m, gr in zip(ref, mine, grads, strict=True):
            r.grad, m.grad = gr.float(), gr
        fused.grad_scale = master.grad_scale = scale
        fused.found_inf = master.found_inf = skip
        fused.step()
        master.step()
    diff = max(float((r.detach() - w).abs().max()) for r, w in zip(ref, master.master_weights().values(), strict=True))
    cast = max(float((m.detach().float() - w.bfloat16().float()).abs().max())
               for m, w in zip(mine, master.master_weights().values(), strict=True))
    return {"max_abs_diff_vs_fused_adamw": diff, "bf16_param_vs_master_max_abs": cast}


VARIANTS = {
    # name: (compile, chunk_tokens, accumulation, micro-batch (None: --batch))
    "engine-compile-hfmask": (True, 4096, 1, None),  # with transformers' mask checks (host syncs)
    "engine": (False, 1024, 1, None),
    "engine-chunk4096": (False, 4096, 1, None),  # since measured, eager chunks are capped at 1024

    "engine-compile": (True, 4096, 1, None),
    "engine-compile-chunk512": (True, 512, 1, None),  # the 8B one-GPU recipe's loss chunks
    "engine-compile-chunk2048": (True, 2048, 1, None),
    "engine-compile-chunk8192": (True, 8192, 1, None),
    "engine-compile-accum4": (True, 4096, 4, None),
    "engine-compile-micro8-accum2": (True, 4096, 2, 8),
}

KERNEL_GROUPS = [  # (group, substrings of CUDA kernel names), first match wins
    ("attention", ("flash", "fmha", "cudnn", "attention")),
    ("gemm", ("gemm", "xmma", "cutlass", "nvjet", "sm90", "matmul")),
    ("optimizer + grad norm", ("adam", "multi_tensor")),
    ("forward-KL kernel", ("forward_kl_kernel",)),
    ("liger (Triton)", ("_rms_norm_", "_swiglu_", "_triton_rope")),  # Liger's kernels (-liger variants)
    ("nccl", ("nccl",)),
    ("triton (compiled)", ("triton",)),
    ("copy/cast", ("copy", "memcpy", "memset", "fill")),
    ("other aten", ("",)),
]


def profile_steps(step, device: torch.device, out_dir: str | None, name: str = "") -> dict:
    """CUDA time per kernel group over 2 steps (torch.profiler), table written to out_dir.
    Without CUDA there are no kernels: the groups are empty."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        sync(device)
    groups: dict[str, float] = {}
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if kernels:  # kernels per step, and the share of the 2 steps' span with no kernel running
        spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
        busy, end = 0.0, spans[0][0]
        for a, b in spans:
            busy += max(0.0, b - max(a, end))
            end = max(end, b)
        groups["kernels per step"] = len(kernels) / 2
        groups["idle (no kernel running)"] = (end - spans[0][0] - busy) / 2 / 1e3
        host = [e.name for e in prof.events() if e.device_type != torch.autograd.DeviceType.CUDA
                and any(k in e.name.lower() for k in ("synchronize", "memcpy", "local_scalar", "item", "nonzero"))]
        for call in sorted(set(host)):
            groups[f"host calls per step: {call}"] = host.count(call) / 2
    for evt in prof.key_averages():
        t = getattr(evt, "self_device_time_total", 0.0) or 0.0
        if t <= 0 or evt.device_type != torch.autograd.DeviceType.CUDA or evt.key.startswith("Optimizer."):
            continue  # (the optimizer's annotation range would count its kernel twice)
        key = evt.key.lower()
        group = next(g for g, keys in KERNEL_GROUPS if any(k in key for k in keys))
        groups[group] = groups.get(group, 0.0) + t / 2 / 1e3  # ms per step
    if out_dir:
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=90)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / f"profile-{name or 'variant'}.txt").write_text(table)
        trace = Path(out_dir) / f"trace-{name or 'variant'}.json"  # chrome://tracing, Perfetto
        prof.export_chrome_trace(str(trace))
        with open(trace, "rb") as f, gzip.open(f"{trace}.gz", "wb") as z:
            shutil.copyfileobj(f, z)
        trace.unlink()
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="naive,engine,engine-compile")
    ap.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"])
    ap.add_argument("--shape", default="1b", choices=sorted(SHAPES),
                    help="1b: Llama 16 x 2048 -> 8 layers, batch 4 x 2048; smollm2: 30 x 576 -> 15, batch 64 x 512; "
                         "8b-depth / 8b-width: Llama-3.1-8B -> 16 layers / hidden 3072 + ffn 9216, batch 4 x 4096")
    ap.add_argument("--batch", type=int, help="sequences per micro-batch (default: the shape's)")
    ap.add_argument("--seq", type=int, help="tokens per sequence (default: the shape's)")
    ap.add_argument("--teacher-layers", type=int)
    ap.add_argument("--student-layers", type=int)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test)")
    ap.add_argument("--json", help="write the results here (rank 0)")
    ap.add_argument("--check", action="store_true", help="first compare the fused loss with float64")
    ap.add_argument("--profile", default="", help="profile 2 steps of these variants (comma-separated; "
                    "kernel time per group)")
    ap.add_argument("--sdpa", default="", choices=["", "cudnn", "flash", "efficient"],
                    help="only this SDPA backend (default: PyTorch's choice)")
    args = ap.parse_args()
    from engine.training.setup import cap_gpu_memory, make_accelerator

    if args.sdpa:  # a process-wide switch (compiled graphs do not guard on it)
        for b in ("cudnn", "flash", "efficient"):
            getattr(torch.backends.cuda, f"enable_{'mem_efficient' if b == 'efficient' else b}_sdp")(b == args.sdpa)
    arch = shape_defaults(args)
    if args.tiny:
        args.seq = min(args.seq, 64)
    acc = make_accelerator(args.strategy, "bf16", ["LlamaDecoderLayer"])
    device = acc.device
    cap_gpu_memory(device)  # SLIMLAB_GPU_MEMORY_CAP_GIB: run as on a smaller card
    world = acc.num_processes
    torch.backends.cuda.matmul.allow_tf32 = True
    g = torch.Generator(device=device).manual_seed(1234 + acc.process_index)
    batches = [torch.randint(0, arch["vocab_size"], (args.batch, args.seq + 1), device=device, generator=g)
               for _ in range(4)]
    tokens_per_step = args.batch * args.seq * world
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"card": card, "processes": world, "sdpa": args.sdpa or "default", "strategy": args.strategy if world > 1 else "single",
               "batch": args.batch, "seq": args.seq, "torch": torch.__version__, "variants": {}}
    if args.check:
        results["check"] = check_fused_loss(device)
        results["check"]["master_adamw"] = check_master_adamw(device)
        if acc.is_main_process:
            print("fused loss vs float64 (relative error):", json.dumps(results["check"]), flush=True)
    for name in [v for v in args.variants.split(",") if v]:
        if name == "naive" and world > 1:
            continue
        t0 = time.perf_counter()
        error = None
        try:
            r, fpt = run_variant(name, args, arch, device, batches, acc, g)
        except Exception as e:  # one variant's failure (a missing package, OOM, a compile error) is reported
            error = (f"{type(e).__name__}: {e}".splitlines() or [type(e).__name__])[0][:500]
            if acc.is_main_process:
                traceback.print_exc()
        if error is not None:  # (out of the except block: its traceback no longer holds the models)
            acc.free_memory()  # the accelerator's references to a half-built Trainer
            memory_reset(device)
            results["variants"][name] = {"error": error}
            if acc.is_main_process:
                print(f"{name:28s} FAILED: {error}", flush=True)
                if args.json:
                    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.json).write_text(json.dumps(results, indent=2))
            continue
        toks = r.get("tokens_per_step", tokens_per_step)
        r["tokens_per_s"] = toks / r["sec_per_step"]
        fpt = fpt or 2 * _matmul_n(arch, args.teacher_layers) + 6 * _matmul_n(arch, args.student_layers)
        r["mfu"] = r["tokens_per_s"] * fpt / (PEAK * world) if device.type == "cuda" else None
        r["wall_s"] = time.perf_counter() - t0
        results["variants"][name] = r
        if args.json and acc.is_main_process:  # after every variant: a later crash keeps these
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=2))
        if acc.is_main_process:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
            mem = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "-"
            print(f"{name:28s} {r['tokens_per_s']:>10,.0f} tok/s  MFU {mfu:>6}  peak {mem:>9}  "
                  f"({r['sec_per_step'] * 1e3:.1f} ms/step, {r['wall_s']:.0f} s incl. build/compile)", flush=True)
            if "profile_ms_per_step" in r:
                groups = r["profile_ms_per_step"] or {"(no CUDA kernels recorded: a CPU run)": 0.0}
                print("  profile, ms/step:", json.dumps({k: round(v, 1) for k, v in groups.items()}))
    if acc.is_main_process:
        base = results["variants"].get("naive")
        if base and "error" not in base:
            for name, r in results["variants"].items():
                if name != "naive" and "error" not in r:
                    r["speedup_vs_naive"] = r["tokens_per_s"] / base["tokens_per_s"]
                    if base["peak_gib"]:
                        r["memory_vs_naive"] = r["peak_gib"] / base["peak_gib"]
                    print(f"{name:28s} {r['speedup_vs_naive']:.2f}x naive tokens/s, "
                          f"{r.get('memory_vs_naive', float('nan')):.2f}x naive peak memory")
        print(json.dumps({k: v for k, v in results.items() if k != "variants"}))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=2))


def shape_defaults(args: argparse.Namespace) -> dict:
    """The --shape preset's arch (TINY's widths with --tiny), filling the size flags not given."""
    arch, teacher, student, batch, seq = SHAPES[args.shape]
    for key, value in (("teacher_layers", teacher), ("student_layers", student), ("batch", batch), ("seq", seq)):
        if getattr(args, key) is None:
            setattr(args, key, value)
    return dict(arch, **{k: TINY[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                               "num_key_value_heads", "head_dim", "vocab_size")}) if args.tiny else arch


def split_kernels(name: str) -> tuple[str, str]:
    """'engine-compile-liger-norope' -> ('engine-compile', 'liger-norope'); no suffix -> (name, '')."""
    for suffix in ("-liger-norope", "-liger"):
        if name.endswith(suffix):
            return name.removesuffix(suffix), suffix[1:]
    return name, ""


def run_variant(name: str, args: argparse.Namespace, arch: dict, device: torch.device,
                batches: list[torch.Tensor], acc, g: torch.Generator) -> tuple[dict, int | None]:
    """One variant's measurement and its FLOPs per token (None: count them from the arch)."""
    torch.compiler.reset()  # each variant compiles afresh: no shared recompile budget, no stale graphs
    profile = name in args.profile.split(",")
    if name == "naive":
        return run_naive(args, arch, device, batches), None
    from engine.models.liger import undo_rope

    # memory options, as suffixes in any order: -tgraph (teacher_cuda_graph), -gc (gradient_checkpointing;
    # -gc0.9: that fraction of the layers), -bf16states / -int8states (optimizer_states = "bfloat16" / "int8"),
    # -sr (master_weights = "stochastic")
    # -int8fused: 8-bit moments updated in one kernel (engine/training/adamw8_triton.py)
    # -f8: float8 = true (the decoder layers' matmuls in float8, student and teacher: engine/models/float8.py)
    opts = {o: name.endswith(f"-{o}") or f"-{o}-" in name
            for o in ("tgraph", "bf16states", "int8states", "int8fused", "sr", "f8")}
    if opts["int8fused"]:
        from engine.training.int8_moments import FUSED_ENV

        os.environ[FUSED_ENV] = "1"  # (each variant runs in its own process in scale_gpu.sh)
    bare = name
    for o in opts:
        bare = bare.replace(f"-{o}", "")
    gc_match = re.search(r"-gc(0\.\d+)?(?=-|$)", bare)
    opts["gc"] = (float(gc_match.group(1)) if gc_match.group(1) else True) if gc_match else False
    bare = bare.replace(gc_match.group(0), "") if gc_match else bare
    base, kernels = split_kernels(bare)
    # `-autocast`: fp32 parameters under bf16 autocast (the engine's path before master weights)
    autocast = base.endswith("-autocast")
    compile_, chunk, accum, micro = VARIANTS[base.removesuffix("-autocast")]
    bs = batches if micro is None else [torch.randint(0, arch["vocab_size"], (micro, args.seq + 1),
                                                     device=device, generator=g) for _ in range(4)]
    try:
        r = run_engine(args, arch, device, bs, acc, compile=compile_, chunk=chunk, accum=accum,
                       profile=profile, hf_mask=base.endswith("-hfmask"),
                       master=False if autocast else "stochastic" if opts["sr"] else None, kernels=kernels, name=name, tgraph=opts["tgraph"],
                       gc=opts["gc"], states="bfloat16" if opts["bf16states"]
                       else "int8" if opts["int8states"] or opts["int8fused"] else "float32", float8=opts["f8"])
    finally:
        undo_rope()  # Liger's RoPE is process-wide: the next variant runs stock
    r["tokens_per_step"] = bs[0].shape[0] * args.seq * acc.num_processes * accum
    return r, r["flops_per_token"]


def _matmul_n(arch: dict, layers: int) -> int:
    h, f, d = arch["hidden_size"], arch["intermediate_size"], arch["head_dim"]
    q, kv = arch["num_attention_heads"] * d, arch["num_key_value_heads"] * d
    return layers * (h * (q + 2 * kv) + q * h + 3 * h * f) + arch["vocab_size"] * h


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    main()
