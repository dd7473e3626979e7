"""Throughput of `prepare` against the raw batch tokenizer call, on the same texts.

    python benchmarks/prepare_throughput.py [--data FILE.jsonl] [--tokenizer DIR] [--rounds 3]

The limit is `tokenizer(texts)` on all texts at once (texts already in memory). The
engine's number is one whole `engine.data.prepare.prepare()` call: tokenizer load, reading
and parsing the file, tokenizing, packing, writing and committing the token files (a fresh
run directory each round, so nothing is reused). Rounds alternate raw / engine so that load
from other processes on the machine hits both alike; the goal is engine >= 80% of raw.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import loads_experiment  # noqa: E402
from engine.contract import RunLayout  # noqa: E402
from engine.data import PackedDataset, split_documents, split_tokens  # noqa: E402
from engine.data.prepare import plan_streams, prepare  # noqa: E402
from engine.data.sources import resolve_corpus  # noqa: E402

DEFAULT_DATA = "/work/shared/data/textkit/train.jsonl"
DEFAULT_TOKENIZER = "/work/shared/data/tokenizer-llama2"


def experiment(data: str, tokenizer: str, runs_dir: str, workers: int):
    return loads_experiment(f"""
name = "bench"
runs_dir = {json.dumps(runs_dir)}
[model]
path = {json.dumps(tokenizer)}
[data]
train_files = [{json.dumps(data)}]
workers = {workers}
""", source="benchmark")


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def run_raw(tok, texts: list[str]) -> tuple[float, float, int]:
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = tok(texts)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return wall, cpu, sum(len(x) for x in out["input_ids"])


def run_engine(exp, runs_dir: str) -> tuple[float, float, int, dict]:
    c0, t0 = cpu_seconds(), time.perf_counter()
    meta = prepare(exp, RunLayout(exp.run_dir), log=lambda _m: None, tty=False)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return wall, cpu, sum(s["tokens"] for s in meta["splits"].values()), meta


def check_packed(tok, exp, n_docs: int = 300) -> None:
    """The packed train stream is its documents' tokens, each followed by EOS (first n_docs)."""
    corpus = resolve_corpus(exp.data, exp.source)
    train_stream = plan_streams(corpus, exp.data)[0][0]
    route = train_stream.route
    docs = [t for i, t in enumerate(train_stream.records()) if (route is None or route[i] == 0) and t.strip()]
    data_dir = RunLayout(exp.run_dir).data_dir
    train, offsets = split_tokens(data_dir, "train"), split_documents(data_dir, "train")
    assert len(offsets) - 1 == len(docs), "document count differs"
    for j, doc in enumerate(docs[:n_docs]):
        want = tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert train[offsets[j]:offsets[j + 1]].tolist() == want, f"document {j} differs"
    assert len(PackedDataset(data_dir, "train", seq_length=4096)) == (len(train) - 1) // 4096
    print(f"check: the first {min(n_docs, len(docs))} packed documents equal tokenizer(doc) + EOS")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="a .jsonl file with a 'text' field")
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="a directory AutoTokenizer loads")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    with open(args.data, "rb") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    print(f"{len(texts):,} documents, {sum(map(len, texts)) / 1e6:.1f} M chars; {os.cpu_count()} CPUs; "
          f"{platform.processor() or platform.machine()}; python {platform.python_version()}")
    raws, engines, ratios, cpu_ratios = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as tmp:
        for r in range(args.rounds):
            rw, rc, rn = run_raw(tok, texts)
            exp = experiment(args.data, args.tokenizer, f"{tmp}/round{r}", args.workers)
            ew, ec, en, meta = run_engine(exp, tmp)
            if r == 0:
                check_packed(tok, exp)
            raws.append(rn / rw)
            engines.append(en / ew)
            ratios.append(engines[-1] / raws[-1])
            cpu_ratios.append((rc / rn) / (ec / en))  # raw CPU-s per token / engine CPU-s per token
            print(f"round {r}: raw tokenizer(texts) {rn:,} tokens in {rw:.2f} s = {rn / rw / 1e6:.3f} M tok/s "
                  f"(cpu {rc:.1f} s) | engine prepare {en:,} tokens in {ew:.2f} s = {en / ew / 1e6:.3f} M tok/s "
                  f"(cpu {ec:.1f} s; packing phase {meta['tokens_per_s'] / 1e6:.3f} M tok/s) | "
                  f"ratio {ratios[-1]:.2f}", flush=True)
    med = statistics.median(ratios)
    print(f"median: raw {statistics.median(raws) / 1e6:.3f} M tok/s, engine {statistics.median(engines) / 1e6:.3f} "
          f"M tok/s, engine/raw = {med:.2f} (goal >= 0.80: {'met' if med >= 0.8 else 'NOT met'}); "
          f"tokens per CPU-second engine/raw = {statistics.median(cpu_ratios):.2f}")
    return 0 if med >= 0.8 else 1


if __name__ == "__main__":
    np.seterr(all="raise")
    sys.exit(main())
