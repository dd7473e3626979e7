"""Search scoring cost: one calibration, then per candidate (prune in memory + loss on the scoring
batches) against a plain forward of the same candidate over the same batches.

A Llama-shaped random model (default on a GPU: the Llama-3.2-1B shape, ~1.24B params, bf16; on the
CPU: a ~16M model, fp32). The search space is the real one (engine.shapes.candidates: target 0.6
of the teacher over layers, hidden and ffn, `--top-k` candidates spread from deep to wide), each
candidate cut from the teacher as the search does: the teacher sorted by importance once
(engine.prune.student.SortedTeacher), each candidate made of views of it.

Per candidate:
  build   SortedTeacher.student (depth: LM-loss layer choice; width: prefix views, no copies)
  before  the build before issue 14: prune_student (index_select of every kept channel, two new
          model objects), of the same candidate; it is the contiguous twin the plain forwards run
  score   engine.evaluation.loss.evaluate_loss over the scoring batches (what a search runs)
  plain   the candidate's plain Hugging Face forward over the same batches: logits only, and
          with labels (transformers' own loss): the floor, and a plain evaluation
Each is timed `--repeats` times, interleaved, and the fastest counts. Before any sorting, each
candidate is also cut and scored as before (prune_student from the teacher as loaded): its loss
is the reference the view-built candidate's loss must match up to float rounding.
Efficiency = plain / (build + score), per candidate and in total (the total also pays the one
sort of the teacher and its restore); the goal (issue 14) is >= 80%:
scoring N candidates costs one calibration plus N evaluations of the scoring batches. On the CPU
the cross-entropy over the vocabulary is a large share of a small model's evaluation, so the
logits-only forward is a strict floor there; the build share (build / (build + score)) is what
the search itself adds.

    python3 benchmarks/search_throughput.py                    # GPU if there is one, else the CPU size
    python3 benchmarks/search_throughput.py --cpu              # the CPU size, also on a GPU machine
    python3 benchmarks/search_throughput.py --tiny             # a seconds-long smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from engine.config import PruneConfig  # noqa: E402
from engine.distill import losses  # noqa: E402
from engine.evaluation.loss import evaluate_loss  # noqa: E402
from engine.models.adapter import Arch  # noqa: E402
from engine.models.hf import count_parameters  # noqa: E402
from engine.prune.importance import calibrate  # noqa: E402
from engine.prune.student import SortedTeacher, prune_student  # noqa: E402
from engine.prune.width import sorted_importance  # noqa: E402
from engine.shapes.candidates import candidate_label, evenly_spaced, search_space  # noqa: E402

SIZES = {  # hidden, ffn, layers, heads, kv, vocab, seq, micro-batch, scoring batches, calibration batches,
    # candidates scored (top_k: 6 keeps the H200 run near a minute)
    "gpu": dict(hidden=2048, ffn=8192, layers=16, heads=32, kv=8, vocab=128256, seq=2048, micro=8, batches=8,
                calib=8, hidden_multiple=64, ffn_multiple=256, top_k=6),
    "cpu": dict(hidden=384, ffn=1024, layers=8, heads=6, kv=2, vocab=8192, seq=256, micro=4, batches=4, calib=2,
                hidden_multiple=24, ffn_multiple=64, top_k=4),
    "tiny": dict(hidden=64, ffn=128, layers=4, heads=4, kv=2, vocab=256, seq=32, micro=2, batches=2, calib=1,
                 hidden_multiple=8, ffn_multiple=16, top_k=4),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


@contextlib.contextmanager
def eager_ce():
    """Evaluation's cross-entropy as before the Triton kernel (engine/distill/ce_triton.py)."""
    saved = losses._ce_kernel_applies
    losses._ce_kernel_applies = lambda *a: False
    try:
        yield
    finally:
        losses._ce_kernel_applies = saved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="the CPU size on the CPU")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke test on the CPU")
    ap.add_argument("--top-k", type=int, default=None, help="candidates scored (default: 6 on a GPU, 4 on the CPU)")
    ap.add_argument("--target", type=float, default=0.6, help="target params, a fraction of the teacher")
    ap.add_argument("--repeats", type=int, default=2, help="timings per candidate; the fastest counts")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not (args.cpu or args.tiny)
    size = SimpleNamespace(**SIZES["tiny" if args.tiny else "gpu" if cuda else "cpu"])
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = AutoConfig.for_model("llama", vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.ffn,
                               num_hidden_layers=size.layers, num_attention_heads=size.heads,
                               num_key_value_heads=size.kv, head_dim=size.hidden // size.heads,
                               tie_word_embeddings=True, max_position_embeddings=max(size.seq + 1, 2048))
    torch.manual_seed(0)
    with torch.device(device):
        teacher = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype).eval()
    g = torch.Generator().manual_seed(0)
    windows = [torch.randint(0, size.vocab, (size.micro, size.seq + 1), generator=g).to(device)
               for _ in range(size.batches)]
    calib = [torch.randint(0, size.vocab, (size.micro, size.seq + 1), generator=g) for _ in range(size.calib)]
    dev_name = torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()}, " \
        f"{torch.get_num_threads()} threads)"
    print(f"device {dev_name}, torch {torch.__version__}, teacher {count_parameters(teacher) / 1e6:.1f}M params "
          f"({size.layers} layers, hidden {size.hidden}, ffn {size.ffn}), {dtype}; scoring batches "
          f"{size.batches} x {size.micro} x {size.seq} tokens", flush=True)

    # the search space, from the config alone
    t = Arch(teacher).shape
    p = PruneConfig(name="bench", method="search", target_params=args.target, top_k=args.top_k or size.top_k,
                    hidden_multiple=size.hidden_multiple, ffn_multiple=size.ffn_multiple)
    space = search_space(t, p, "bench", "bfloat16" if cuda else "float32", size.seq)
    print(f"{space.describe()}", flush=True)

    # one calibration (with the LM-loss layer scores a search uses to drop layers)
    calib_s, imp = timed(lambda: calibrate(teacher, calib, lm_loss=True), device)
    print(f"calibration: {calib_s:.2f}s for {size.calib} batches (with LM-loss layer scores)", flush=True)

    @torch.inference_mode()
    def plain(model) -> None:
        for w in windows:
            model(input_ids=w[:, :-1], use_cache=False)

    @torch.inference_mode()
    def plain_loss(model) -> None:
        for w in windows:
            model(input_ids=w[:, :-1], labels=w[:, 1:], use_cache=False)

    evaluate_loss(teacher, windows[:1])  # warm-up: kernels, allocator
    plain(teacher)
    # the reference: each candidate cut as before issue 14, from the teacher as loaded, its loss by the
    # eager chunk loss (before the Triton cross-entropy kernel)
    picks = evenly_spaced(space.screened, space.top_k)  # top_k shapes from the deepest to the widest
    with eager_ce():
        reference = {i: evaluate_loss(prune_student(teacher, imp, space.student(i)), windows) for i in picks}
    # rank every axis and sort the teacher in place, once for the whole search (restored at the end)
    sort_s, sorted_teacher = timed(lambda: SortedTeacher(teacher, imp).__enter__(), device)
    imp_sorted = sorted_importance(imp, sorted_teacher.order)  # prune_student keeps the same channels with it
    rows = []
    for i in picks:
        target = space.student(i)
        build_s, before_s, score_s, eager_s, plain_s, plain_loss_s = (math.inf,) * 6
        for _ in range(args.repeats):  # the fastest of interleaved repeats: robust to a loaded machine
            bb, twin = timed(lambda target=target: prune_student(teacher, imp_sorted, target), device)
            b, cand = timed(lambda target=target: sorted_teacher.student(target), device)
            s, loss = timed(lambda cand=cand: evaluate_loss(cand, windows), device)
            with eager_ce():
                e, _ = timed(lambda cand=cand: evaluate_loss(cand, windows), device)
            f, _ = timed(lambda twin=twin: plain(twin), device)
            fl, _ = timed(lambda twin=twin: plain_loss(twin), device)
            build_s, before_s, score_s, eager_s = min(build_s, b), min(before_s, bb), min(score_s, s), min(eager_s, e)
            plain_s, plain_loss_s = min(plain_s, f), min(plain_loss_s, fl)
            del twin, cand
        rows.append({"candidate": candidate_label(target.shape), "params": space.candidates[i].params,
                     "loss": loss, "loss_before": reference[i], "build_s": build_s, "build_before_s": before_s,
                     "score_s": score_s, "score_eager_ce_s": eager_s, "plain_s": plain_s, "plain_loss_s": plain_loss_s,
                     "efficiency": plain_s / (build_s + score_s),
                     "efficiency_vs_loss": plain_loss_s / (build_s + score_s)})
        r = rows[-1]
        print(f"  {r['candidate']:<26} build {build_s:.3f}s (before {before_s:.3f}s)  score {score_s:.3f}s (eager CE {eager_s:.3f}s)  "
              f"plain forward {plain_s:.3f}s (with loss {plain_loss_s:.3f}s) -> {r['efficiency']:.0%} "
              f"({r['efficiency_vs_loss']:.0%})  (loss {loss:.5f}, before {reference[i]:.5f})", flush=True)
        if cuda:
            torch.cuda.empty_cache()
    restore_s, _ = timed(lambda: sorted_teacher.__exit__(None, None, None), device)
    sort_s += restore_s
    total = sum(r["build_s"] + r["score_s"] for r in rows) + sort_s
    total_plain = sum(r["plain_s"] for r in rows)
    total_plain_loss = sum(r["plain_loss_s"] for r in rows)
    build = sum(r["build_s"] for r in rows) + sort_s
    build_before = sum(r["build_before_s"] for r in rows)
    summary = {
        "device": dev_name, "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""),
        "teacher_params": count_parameters(teacher), "candidates": len(rows), "space": len(space.candidates),
        "calibration_s": calib_s, "sort_s": sort_s, "search_s": calib_s + total,
        "per_candidate_s": total / max(len(rows), 1), "plain_per_candidate_s": total_plain / max(len(rows), 1),
        "efficiency_total": total_plain / total if total else math.nan,
        "efficiency_vs_loss_total": total_plain_loss / total if total else math.nan,
        "build_share": build / total if total else math.nan,
        "build_per_candidate_s": build / max(len(rows), 1),
        "build_before_per_candidate_s": build_before / max(len(rows), 1),
        "max_loss_change": max(abs(r["loss"] - r["loss_before"]) for r in rows) if rows else math.nan,
        "efficiency_median": statistics.median(r["efficiency"] for r in rows) if rows else math.nan,
        "rows": rows,
    }
    print(f"search: calibration {calib_s:.2f}s + {len(rows)} candidates x {summary['per_candidate_s']:.3f}s "
          f"(plain forward {summary['plain_per_candidate_s']:.3f}s) = {summary['search_s']:.2f}s; efficiency "
          f"{summary['efficiency_total']:.0%} in total vs the logits-only forward, {summary['efficiency_median']:.0%} "
          f"median; {summary['efficiency_vs_loss_total']:.0%} vs the forward with loss (goal >= 80%); building "
          f"the candidates is {summary['build_share']:.1%} of the search time ({summary['build_per_candidate_s']:.4f}s "
          f"per candidate with the sort {sort_s:.3f}s spread, before {summary['build_before_per_candidate_s']:.4f}s); "
          f"largest loss change vs the build before: {summary['max_loss_change']:.2e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
