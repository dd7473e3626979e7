"""A prepared data folder whose test split is held out from its validation split's own text (issue 23, section 3).

The SmolLM2 audit judged on WikiText-2 while the search scored on textkit's validation text: two kinds of text,
and the distill score ranked the shapes at +0.07 against the first and +0.93 on the second (benchmarks/RESULTS.md
"The misranking is the split"). This folder asks the issue's question on one kind of text: the validation
split's documents are cut in two, the first part stays the validation split (what the search screens and scores
on), the rest becomes the test split (what the audit judges on, which the search never sees); train is linked
unchanged. The documents are whole: no window of the test split comes from a document the search saw.

    python3 benchmarks/smollm2/split_validation.py .carry/smol-textkit OUT_DIR [--fraction 0.5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.data.prepared import link_or_copy  # noqa: E402


def split_validation(src: Path, out: Path, fraction: float = 0.5) -> dict:
    """Write `out` from the prepared folder `src`; return its meta.json."""
    meta = json.loads((src / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    starts = np.load(src / "validation.idx.npy")  # document starts, then the end
    tokens = np.fromfile(src / "validation.bin", dtype=dtype)
    docs = len(starts) - 1
    cut = max(1, min(docs - 1, round(docs * fraction)))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train.bin", "train.idx.npy"):
        (out / name).unlink(missing_ok=True)
        link_or_copy(src / name, out / name)
    if (src / "tokenizer").is_dir():
        shutil.copytree(src / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    splits = {"train": meta["splits"]["train"]}
    for split, (a, b) in {"validation": (0, cut), "test": (cut, docs)}.items():
        part = tokens[starts[a]:starts[b]]
        part.tofile(out / f"{split}.bin")
        np.save(out / f"{split}.idx.npy", (starts[a:b + 1] - starts[a]).astype(starts.dtype))
        splits[split] = {"tokens": int(part.size), "documents": b - a, "held_out": False, "truncated": False}
    new = {**meta, "splits": splits, "held_out_from": f"{src}: validation documents {cut}..{docs - 1} as test"}
    (out / "meta.json").write_text(json.dumps(new, indent=1))
    return new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", type=Path, help="a prepared folder (prepare's output, e.g. .carry/smol-textkit)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--fraction", type=float, default=0.5, help="of the validation documents kept as validation")
    a = ap.parse_args()
    meta = split_validation(a.src, a.out, a.fraction)
    print(f"{a.out}: " + ", ".join(f"{k} {v['tokens']:,} tokens in {v['documents']} documents"
                                   for k, v in meta["splits"].items()))


if __name__ == "__main__":
    main()
