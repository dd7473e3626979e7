"""What optimizer offload would cost the 8B -> 4.5B student step (issue 21, section 2): measured parts.

Offload (ZeRO-Offload's way) keeps the fp32 master weights and Adam moments in host memory, ships each
step's bf16 gradients to the host, runs AdamW on the CPU, and ships the bf16 weights back. Its floor per
step is the CPU's AdamW over every parameter plus the two copies; this script measures both on the machine
it runs on and scales them to `--params` (both are linear in the parameter count):

    python3 benchmarks/offload_cost.py --params 4.5e9 --sample 2.5e8 --gpu-step-s 1.35 [--json OUT.json]

--sample parameters are stepped (torch.optim.AdamW, fused on the CPU where torch has it, else foreach) and
copied (pinned, bf16, both directions) for real; --gpu-step-s is the measured GPU step of the recipe it
would replace (RESULTS.md: the width student's 4 x 4096 tokens at ~12,000 tokens/s is ~1.36 s). Without
overlap the offloaded step takes the GPU step plus this floor; fully overlapped, the larger of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def time_adamw(n: int, steps: int) -> tuple[float, str]:
    """Seconds per AdamW step over n fp32 parameters on the CPU (the fastest implementation torch has)."""
    p = torch.zeros(n, dtype=torch.float32, requires_grad=True)
    p.grad = torch.randn(n, dtype=torch.float32) * 1e-3
    for kind in ("fused", "foreach"):
        try:
            opt = torch.optim.AdamW([p], lr=1e-4, **{kind: True})
            opt.step()  # allocates the moments; a failure here means this kind is missing on the CPU
            break
        except (RuntimeError, TypeError):
            continue
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps, kind


def time_copies(n: int, steps: int) -> dict[str, float] | None:
    """Seconds per bf16 copy of n values GPU -> pinned host and back (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    dev = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    host = torch.empty(n, dtype=torch.bfloat16).pin_memory()
    out = {}
    for name, dst, src in (("d2h_s", host, dev), ("h2d_s", dev, host)):
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        out[name] = (time.perf_counter() - t0) / steps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=float, default=4.5e9, help="the student's parameters (default 4.5e9)")
    ap.add_argument("--sample", type=float, default=2.5e8, help="parameters actually stepped and copied")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--gpu-step-s", type=float, default=1.36, help="the GPU step it would sit beside")
    ap.add_argument("--json")
    args = ap.parse_args()
    n, scale = int(args.sample), args.params / args.sample
    adamw_s, kind = time_adamw(n, args.steps)
    copies = time_copies(n, args.steps)
    out = {"params": args.params, "sample": n, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "adamw_kind": kind, "adamw_s": adamw_s * scale, "gpu_step_s": args.gpu_step_s}
    if copies:
        out.update({k: v * scale for k, v in copies.items()})
        out["gbps"] = {k: 2 * n / v / 1e9 for k, v in copies.items()}
    floor = out["adamw_s"] + out.get("d2h_s", 0.0) + out.get("h2d_s", 0.0)
    out["floor_s"] = floor
    out["serial_slowdown"] = (args.gpu_step_s + floor) / args.gpu_step_s
    out["overlapped_slowdown"] = max(args.gpu_step_s, floor) / args.gpu_step_s
    print(f"AdamW on the CPU ({kind}, {out['threads']} threads): {out['adamw_s']:.2f} s per step at "
          f"{args.params / 1e9:.2f}B parameters (measured over {n / 1e6:.0f}M)")
    if copies:
        print(f"bf16 copies: GPU->host {out['d2h_s']:.2f} s ({out['gbps']['d2h_s']:.1f} GB/s), "
              f"host->GPU {out['h2d_s']:.2f} s ({out['gbps']['h2d_s']:.1f} GB/s)")
    else:
        print("no CUDA: the copies are not measured (the floor below is the CPU step alone)")
    print(f"offload floor {floor:.2f} s per step beside a {args.gpu_step_s:.2f} s GPU step: "
          f"{out['serial_slowdown']:.2f}x the step in series, {out['overlapped_slowdown']:.2f}x fully overlapped")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
