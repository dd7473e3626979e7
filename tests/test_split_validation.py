"""benchmarks/smollm2/split_validation.py: the audit's held-out text of the search's own kind (issue 23). The test
split it writes is the validation split's last documents, whole, and the validation split keeps the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from engine.data import PackedDataset

ROOT = Path(__file__).resolve().parent.parent


def _prepared(folder: Path, docs: list[int]) -> np.ndarray:
    """A prepared folder as `prepare` writes it: train, and a validation split of documents of these lengths."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    splits = {}
    for split, lengths in {"train": [300, 200], "validation": docs}.items():
        tokens = rng.integers(3, 500, size=sum(lengths)).astype(np.uint16)
        tokens.tofile(folder / f"{split}.bin")
        np.save(folder / f"{split}.idx.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        splits[split] = {"tokens": int(tokens.size), "documents": len(lengths), "held_out": False, "truncated": False}
    (folder / "meta.json").write_text(json.dumps({"format": 1, "vocab_size": 500, "dtype": "uint16", "eos_token_id": 2,
                                                 "bos_token_id": 1, "splits": splits}))
    return np.fromfile(folder / "validation.bin", dtype=np.uint16)


def test_the_test_split_is_the_validation_texts_last_documents_whole(tmp_path):
    docs = [40, 70, 30, 90, 50, 60]
    original = _prepared(tmp_path / "src", docs)
    out = tmp_path / "ho"
    done = subprocess.run([sys.executable, "benchmarks/smollm2/split_validation.py", str(tmp_path / "src"), str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "meta.json").read_text())
    val, test = (np.fromfile(out / f"{s}.bin", dtype=np.uint16) for s in ("validation", "test"))
    assert np.array_equal(np.concatenate([val, test]), original)  # nothing lost, nothing shared
    assert val.size == sum(docs[:3]) and test.size == sum(docs[3:])  # cut between documents
    assert list(np.load(out / "test.idx.npy")) == [0, 90, 140, 200]
    assert [meta["splits"][s]["documents"] for s in ("validation", "test")] == [3, 3]
    assert meta["splits"]["test"]["tokens"] == test.size and meta["splits"]["train"]["tokens"] == 500
    assert (out / "train.bin").read_bytes() == (tmp_path / "src" / "train.bin").read_bytes()
    for split in ("train", "validation", "test"):  # the engine reads every split of it
        assert len(PackedDataset(out, split, 16, seed=0)) > 0
