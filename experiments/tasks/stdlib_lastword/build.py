"""Rebuild stdlib_lastword.jsonl: LAMBADA-style last-word items from the demo's held-out text.

    slimlab-engine run experiments/demo.toml --only prepare --runs-dir /tmp/runs
    python experiments/tasks/stdlib_lastword/build.py /tmp/runs/demo

Reads the validation and test documents of a prepared demo run (text the demo's teacher never
trains on), cuts them into paragraphs, and keeps prose paragraphs of 8-120 words whose last word
(3+ letters) also occurs earlier in the paragraph, as LAMBADA does: the word is guessable from the
context. Each item is {"context": paragraph up to the last word, "target": " word"}.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MAX_ITEMS = 300
_LAST = re.compile(r"^(?P<context>.*\S)\s+(?P<word>[A-Za-z]{3,})[.!?]?$", re.S)


def items_of(text: str) -> list[dict[str, str]]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        words = para.split()
        if not 8 <= len(words) <= 120 or sum(c.isalpha() or c.isspace() for c in para) < 0.85 * len(para):
            continue
        m = _LAST.match(para)
        if m and re.search(rf"\b{re.escape(m['word'])}\b", m["context"]):
            out.append({"context": m["context"], "target": " " + m["word"]})
    return out


def main(run_dir: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from engine.contract import RunLayout
    from engine.data.dataset import split_documents, split_tokens
    from engine.models.hf import load_tokenizer

    data = RunLayout(run_dir).data_dir
    tok = load_tokenizer(str(data / "tokenizer"))
    items: list[dict[str, str]] = []
    for split in ("validation", "test"):
        tokens, offsets = split_tokens(data, split), split_documents(data, split)
        for a, b in zip(offsets[:-1], offsets[1:], strict=True):
            items += items_of(tok.decode(tokens[a:b].tolist(), skip_special_tokens=True))
    seen: set[str] = set()
    unique = [it for it in items if not (it["context"] in seen or seen.add(it["context"]))]
    out = Path(__file__).with_name("stdlib_lastword.jsonl")
    with out.open("w", encoding="utf-8") as f:
        for it in unique[:MAX_ITEMS]:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    print(f"{out}: {min(len(unique), MAX_ITEMS)} items (of {len(unique)})")


if __name__ == "__main__":
    main(sys.argv[1])
