"""Where a stage's peak GPU memory goes: run one stage in this process with torch's allocator history on, then
replay the history to the moment of the peak and group what was live then by the code that allocated it.

    python3 benchmarks/memory_probe.py --out PEAK.txt -- prune EXP --stage prune-search --set ...

Everything after `--` is `slimlab-engine`'s command line (one stage, in this process). The report lists the
peak (which must equal torch.cuda.max_memory_allocated), then the live bytes at the peak by allocating frame
(the innermost frame in slimlab, else in transformers or torch.nn), largest first. Issue 21, section 1: the
prune stage's measured peak against `check`'s prediction (benchmarks/RESULTS.md). Without CUDA it runs the
stage and records nothing (a smoke test of the command line).

The history is torch's documented snapshot tool (torch.cuda.memory._record_memory_history / _snapshot; see
https://pytorch.org/docs/stable/torch_cuda_memory.html), a benchmark's aid, never the engine's.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GIB = 2**30
MAX_ENTRIES = 4_000_000


def site(frames: list[dict]) -> str:
    """The innermost frame of ours, else of transformers or torch.nn, else the innermost: 'file:line fn'."""
    def short(f: dict) -> str:
        name = f["filename"]
        for root in ("/engine/", "/transformers/", "/torch/"):
            if root in name:
                name = root.strip("/") + "/" + name.split(root, 1)[1]
                break
        return f"{name}:{f['line']} {f['name']}"

    for keys in (("/engine/",), ("/transformers/", "/torch/nn/")):
        for f in frames:
            if any(k in f["filename"] for k in keys):
                return short(f)
    return short(frames[0]) if frames else "?"


def peak_report(snapshot: dict, device: int, measured: int) -> str:
    """Replay the allocations to the largest total and list what was live then."""
    trace = snapshot["device_traces"][device]

    def replay(upto: int) -> tuple[dict[int, tuple[int, list[dict]]], int, int]:
        """The blocks live after event `upto`; the largest total on the way and the event it came at."""
        live: dict[int, tuple[int, list[dict]]] = {}
        total = best = at = 0
        for k, ev in enumerate(trace[:upto + 1]):
            if ev["action"] == "alloc":
                live[ev["addr"]] = (ev["size"], ev.get("frames", []))
                total += ev["size"]
                if total > best:
                    best, at = total, k
            elif ev["action"] == "free_completed" and ev["addr"] in live:
                total -= live.pop(ev["addr"])[0]
        return live, best, at

    _, best, at = replay(len(trace) - 1)  # where the peak is; then what was live there (no copy per new peak)
    at_best = replay(at)[0]
    by_site: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for size, frames in at_best.values():
        s = by_site[site(frames)]
        s[0] += size
        s[1] += 1
    lines = [f"events {len(trace)} (cap {MAX_ENTRIES}: {'complete' if len(trace) < MAX_ENTRIES else 'TRUNCATED'})",
             f"replayed peak {best / GIB:.2f} GiB; torch.cuda.max_memory_allocated {measured / GIB:.2f} GiB",
             f"{'GiB':>7} {'tensors':>7}  allocated at"]
    for name, (size, n) in sorted(by_site.items(), key=lambda kv: -kv[1][0]):
        if size >= 0.01 * GIB:
            lines.append(f"{size / GIB:7.2f} {n:7d}  {name}")
    top = max(by_site, key=lambda k: by_site[k][0])
    lines += [f"the largest, {top}, by its innermost frame and block size:"] + inner_sites(
        [(size, frames) for size, frames in at_best.values() if site(frames) == top])
    return "\n".join(lines)


def inner_sites(blocks: list[tuple[int, list[dict]]]) -> list[str]:
    """Blocks grouped by the innermost Python frame that allocated them and their size (a tensor's shape, in
    effect): what inside one of our calls holds the memory."""
    groups: dict[tuple[str, int], int] = defaultdict(int)
    for size, frames in blocks:
        f = frames[0] if frames else {"filename": "?", "line": 0, "name": "?"}
        groups[(f"{f['filename'].rsplit('/site-packages/', 1)[-1]}:{f['line']} {f['name']}", size)] += 1
    rows = sorted(groups.items(), key=lambda kv: -kv[0][1] * kv[1])[:25]
    return [f"{size * n / GIB:7.2f} {n:7d}  {size / 2**20:9.2f} MiB each  {where}" for (where, size), n in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the report")
    ap.add_argument("engine_args", nargs=argparse.REMAINDER, help="-- then slimlab-engine's arguments")
    args = ap.parse_args()
    import torch

    from engine.cli import main as engine_main

    argv = [a for a in args.engine_args if a != "--"]
    if not torch.cuda.is_available():  # a smoke test of the plumbing: the stage runs, nothing is recorded
        rc = engine_main(argv)
        Path(args.out).write_text(f"no CUDA: ran the stage (exit {rc}) without the allocator's history\n")
        return rc
    torch.cuda.memory._record_memory_history(max_entries=MAX_ENTRIES, stacks="python")
    rc = engine_main(argv)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    report = peak_report(snapshot, torch.cuda.current_device(), torch.cuda.max_memory_allocated())
    Path(args.out).write_text(report + "\n")
    print(report)
    return rc


if __name__ == "__main__":
    sys.exit(main())
