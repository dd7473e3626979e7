"""Importance calibration vs plain forward passes: tokens/s of the same model and batch, same run.

A Llama-shaped random model (default: the Llama-3.2-1B shape, ~1.24B params) in bf16 on one
GPU. Three timed loops, interleaved over several rounds so that clock drift hits all alike:

  forward      decoder forward (model.model, no lm_head): what calibration runs, without hooks
  calibration  the same forward with every importance hook on (MLP neurons, heads, norms,
               block influence, pairwise angular distances) -> engine.prune.importance.Calibrator
  full         the full causal-LM forward with logits, for reference

Goal (issue 3): calibration >= 80% of the forward tokens/s.

    PYTHONUNBUFFERED=1 python3 benchmarks/calibration_throughput.py            # GPU, ~1B model
    python3 benchmarks/calibration_throughput.py --tiny                       # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from engine.models.hf import count_parameters  # noqa: E402
from engine.prune.importance import Calibrator  # noqa: E402


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    cfg = AutoConfig.for_model("llama", vocab_size=args.vocab, hidden_size=args.hidden,
                               intermediate_size=args.ffn, num_hidden_layers=args.layers,
                               num_attention_heads=args.heads, num_key_value_heads=args.kv,
                               head_dim=args.hidden // args.heads, tie_word_embeddings=True,
                               max_position_embeddings=max(args.seq, 2048))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of fn (after a sync on both ends)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return time.perf_counter() - t0


def prune_check(model, imp, ids: torch.Tensor, device: torch.device) -> dict:
    """Width- and depth-prune on the device; the saved students must reload with the same logits."""
    import tempfile

    from engine.config import PruneConfig
    from engine.config.shape import count_params, student_shape
    from engine.models.adapter import Arch
    from engine.models.hf import save_model
    from engine.prune.depth import prune_depth, select_layers
    from engine.prune.width import prune_width, select_width

    t = Arch(model).shape
    res = {}
    targets = {"width": PruneConfig(name="w", method="width", ffn_hidden_size=t.intermediate_size // 2,
                                    hidden_size=t.hidden_size * 3 // 4),
               "depth": PruneConfig(name="d", method="depth", num_layers=t.num_layers // 2)}
    for name, p in targets.items():
        plan = student_shape(t, p, name)
        sync(device)
        t0 = time.perf_counter()
        if name == "width":
            student = prune_width(model, select_width(imp, t, plan.shape), plan.shape)
        else:
            student = prune_depth(model, select_layers(imp, t.num_layers, plan.num_drop, "block-influence"))
        sync(device)
        secs = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as d:
            save_model(student, Path(d) / "model")
            back = AutoModelForCausalLM.from_pretrained(Path(d) / "model", dtype=model.dtype).to(device).eval()
            with torch.inference_mode():
                diff = (student(input_ids=ids).logits.float() - back(input_ids=ids).logits.float()).abs().max()
        res[name] = {"seconds": round(secs, 3), "params": count_parameters(student),
                     "params_config": count_params(plan.shape), "reload_max_abs_logit_diff": float(diff)}
        del student, back
        print(f"prune {name}: {res[name]}", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10, help="timed forwards per loop and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--pairwise-tokens", type=int, default=2048)
    ap.add_argument("--tiny", action="store_true", help="a tiny CPU run that checks the script works")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--prune", action="store_true",
                    help="then prune the model (width and depth) on the device, save, reload, compare logits")
    args = ap.parse_args()
    if args.tiny:
        args.hidden, args.ffn, args.layers, args.heads, args.kv, args.vocab = 64, 128, 2, 4, 2, 256
        args.batch, args.seq, args.steps, args.rounds, args.warmup = 2, 32, 2, 2, 1
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    model = build(args, device, dtype)
    params = count_parameters(model)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    tokens = args.batch * args.seq
    print(f"device {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"model {params / 1e9:.3f}B params ({args.layers} layers, hidden {args.hidden}, ffn {args.ffn}), "
          f"batch {args.batch} x {args.seq} = {tokens} tokens, {dtype}", flush=True)

    @torch.inference_mode()
    def forward() -> None:
        model.model(input_ids=ids, use_cache=False)

    @torch.inference_mode()
    def full() -> None:
        model(input_ids=ids, use_cache=False)

    cal = Calibrator(model, batch_agg="l2", seq_agg="mean", pairwise_tokens=args.pairwise_tokens)
    cal_np = Calibrator(model, batch_agg="l2", seq_agg="mean", pairwise_tokens=0)
    for _ in range(args.warmup):
        forward()
        full()
        with cal:
            cal.run(ids)
        with cal_np:
            cal_np.run(ids)
    times: dict[str, list[float]] = {"forward": [], "calibration": [], "calibration_no_pairwise": [], "full": []}
    for r in range(args.rounds):
        times["forward"].append(timed(forward, args.steps, device))
        with cal:
            times["calibration"].append(timed(lambda: cal.run(ids), args.steps, device))
        with cal_np:
            times["calibration_no_pairwise"].append(timed(lambda: cal_np.run(ids), args.steps, device))
        times["full"].append(timed(full, args.steps, device))
        print(f"round {r + 1}: " + ", ".join(f"{k} {tokens * args.steps / v[-1]:,.0f} tok/s"
                                             for k, v in times.items()), flush=True)
    t0 = time.perf_counter()
    imp = cal.result()  # the one host copy at the end of a calibration
    result_s = time.perf_counter() - t0
    assert torch.isfinite(imp.mlp).all() and torch.isfinite(imp.hidden).all() and imp.angular is not None

    tps = {k: tokens * args.steps / statistics.median(v) for k, v in times.items()}
    out = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "params": params, "batch": args.batch, "seq": args.seq,
        "dtype": str(dtype), "steps": args.steps, "rounds": args.rounds,
        "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "calibration_vs_forward": round(tps["calibration"] / tps["forward"], 4),
        "calibration_no_pairwise_vs_forward": round(tps["calibration_no_pairwise"] / tps["forward"], 4),
        "calibration_vs_full_forward": round(tps["calibration"] / tps["full"], 4),
        "result_seconds": round(result_s, 4),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }
    if args.prune:
        out["prune"] = prune_check(model, imp, ids[:2, :256], device)
    print(json.dumps(out, indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    ok = out["calibration_vs_forward"] >= 0.8
    print(f"calibration runs at {100 * out['calibration_vs_forward']:.1f}% of plain forward tokens/s: "
          f"{'PASS' if ok else 'FAIL'} (goal >= 80%)", flush=True)
    return 0 if ok or args.tiny or os.environ.get("BENCH_NO_FAIL") else 1


if __name__ == "__main__":
    sys.exit(main())
