"""The two Triton kernels of the distillation step against their alternatives, alone (one GPU).

    optimizer  one update of the 0.75B student of distill_throughput.py (74 tensors):
               fused fp32 AdamW (fp32 weights + gradients), MasterAdamW with its Triton kernel,
               and with `adamw_reference` under torch.compile (dynamic shapes), the first version.
    kd         one 4096 x 128256 chunk of the forward-KL loss and its gradient: the compiled
               `chunk_loss` against engine/distill/kl_triton.py, both vs float64.

Wall time per call (host included) and summed kernel time (torch.profiler).
Usage: python benchmarks/kernels_gpu.py [--json OUT.json]        Results: benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

KW = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def student_shapes() -> list[tuple[int, ...]]:
    layer = [(2048, 2048), (512, 2048), (512, 2048), (2048, 2048), (8192, 2048), (8192, 2048), (2048, 8192),
             (2048,), (2048,)]
    return [(128256, 2048)] + layer * 8 + [(2048,)]


def timed(fn, n: int = 5) -> dict:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / n * 1e3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    kernels = sum(e.self_device_time_total for e in prof.key_averages()
                  if e.device_type == torch.autograd.DeviceType.CUDA and not e.key.startswith("Optimizer"))
    return {"wall_ms": round(wall, 3), "kernel_ms": round(kernels / n / 1e3, 3)}


def optimizer_variants() -> dict:
    from engine.training import master_adamw
    from engine.training.master_adamw import MasterAdamW

    def params() -> list[torch.nn.Parameter]:
        torch.manual_seed(0)
        return [torch.nn.Parameter(torch.randn(s, device="cuda") * 0.02) for s in student_shapes()]

    def run(opt, ps) -> dict:
        for p in ps:
            p.grad = torch.randn_like(p)  # bf16 for MasterAdamW's parameters, fp32 for AdamW's
        opt.grad_scale = torch.tensor(1.0, device="cuda")
        opt.found_inf = torch.tensor(0.0, device="cuda")
        return timed(opt.step)

    out = {}
    ps = params()
    out["fused AdamW, fp32 weights"] = run(torch.optim.AdamW(ps, fused=True, **KW), ps)
    ps = params()
    out["MasterAdamW, Triton kernel"] = run(MasterAdamW(ps, fused=True, **KW), ps)
    ps = params()
    opt = MasterAdamW(ps, **KW)
    opt._update = torch.compile(master_adamw.adamw_reference, dynamic=True)
    out["MasterAdamW, torch.compile(adamw_reference)"] = run(opt, ps)
    return out


def kd_variants() -> dict:
    from engine.distill import kl_triton
    from engine.distill.losses import LossSpec, chunk_loss

    torch.manual_seed(0)
    n, vocab = 4096, 128256
    s = (torch.randn(n, vocab, device="cuda") * 3).bfloat16()
    t = (torch.randn(n, vocab, device="cuda") * 3 + 0.5 * s.float()).bfloat16()
    labels = torch.randint(0, vocab, (n,), device="cuda")
    labels[:7] = -100
    scale = torch.tensor(1.0 / 8000, device="cuda")
    spec = LossSpec("forward_kl", temperature=2.0)
    ref_kd, _, ref_g = chunk_loss(s.double(), t.double(), labels, scale.double(), spec, True)
    compiled = torch.compile(chunk_loss, dynamic=False)
    out = {}
    for name, fn in (("torch.compile(chunk_loss)", compiled), ("kl_triton", kl_triton.forward_kl_chunk)):
        kd, _, g = fn(s, t, labels, scale, spec, True, torch.bfloat16)
        out[name] = {**timed(lambda fn=fn: fn(s, t, labels, scale, spec, True, torch.bfloat16)),
                     "loss_rel_err": float((kd.double() - ref_kd).abs() / ref_kd.abs()),
                     "grad_rel_err": float((g.double() - ref_g).norm() / ref_g.norm())}
        del kd, g
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
               "optimizer": optimizer_variants(), "kd_chunk": kd_variants()}
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
