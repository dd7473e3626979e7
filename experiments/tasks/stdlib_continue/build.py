"""Rebuild stdlib_continue.jsonl: pick the true next words of a held-out docstring passage among 4.

    python experiments/tasks/stdlib_continue/build.py [experiments/demo.toml]

The items come from the documents the demo holds out (its validation and test splits: docstrings and
comments of whole standard-library modules its teacher never trains on), found by the engine's own
split (engine.data.prepare.plan_streams) on the demo's [data] section: no run needed. Every 40 words
into a document (from word 24 on), the passage before the cut (up to 80 words) is the context and
its next 6 words the answer, when they read as prose; the three distractors are answers cut from
*other* held-out documents. The answer's slot is balanced over the 4 (a blind guess scores 25%). An
item whose context or answer also occurs in the training text (a docstring copied between modules,
a stock phrase) is left out, so no choice was seen in training.

Why this shape: the demo's teacher is tiny (300 steps), and a model that small mostly scores how
common a span's words are. Short answers, and the task's metric (acc_mutual_info: how much the
context raises each span's likelihood), leave what the context tells it: the teacher scores 0.40,
six stderr above 25% (on stdlib_lastword, an exact last word, every model of the demo scored 0).

The split depends on the installed standard library (the builtin corpus is read from it), so
stdlib_continue.json records the Python it was built with; the demo's task is held out only there.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DEMO = ROOT / "experiments" / "demo.toml"
JSONL = HERE / "stdlib_continue.jsonl"
INFO = HERE / "stdlib_continue.json"  # what it was built from: the Python whose stdlib was split
CHOICES = 4
ANSWER_WORDS = 6
MIN_CONTEXT_WORDS, MAX_CONTEXT_WORDS = 24, 80
STRIDE = 40  # words between two cuts in one document
MAX_ITEMS = 400
SEED = 1234


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def splits(experiment: str | Path = DEMO) -> tuple[list[str], list[str]]:
    """(train documents, held-out documents) of an experiment's [data], as its prepare stage splits them."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from engine.config import load_experiment
    from engine.data.prepare import plan_streams
    from engine.data.sources import resolve_corpus

    exp = load_experiment(experiment)
    corpus = resolve_corpus(exp.data, str(experiment))
    streams, _ = plan_streams(corpus, exp.data)
    train, held = [], []
    for stream in streams:
        for i, text in enumerate(stream.records()):
            in_train = stream.split == "train" and (stream.route is None or stream.route[i] == 0)
            (train if in_train else held).append(text)
    return train, held


def flat(text: str) -> str:
    return " ".join(text.split())


class TrainText:
    """`span in train`, for hundreds of spans against megabytes: a span of 6+ words can occur only if
    each of its 6-word windows does (a set lookup); only those few are searched for in full."""

    WINDOW = ANSWER_WORDS

    def __init__(self, train: list[str]):
        self.text = "\n".join(flat(t) for t in train)
        words = self.text.split()
        self.windows = {hash(" ".join(words[i:i + self.WINDOW])) for i in range(len(words) - self.WINDOW + 1)}

    def __contains__(self, span: str) -> bool:
        w = span.split()
        if len(w) >= self.WINDOW and not all(hash(" ".join(w[i:i + self.WINDOW])) in self.windows
                                             for i in range(len(w) - self.WINDOW + 1)):
            return False
        return flat(span) in self.text


def is_prose(text: str) -> bool:
    return sum(c.isalpha() or c.isspace() for c in text) >= 0.85 * len(text)


def build(train: list[str], held: list[str], seed: int = SEED, seen: TrainText | None = None) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    seen = seen or TrainText(train)
    cands = []  # (document index, context, answer)
    for d, doc in enumerate(held):
        words = doc.split()
        for cut in range(MIN_CONTEXT_WORDS, len(words) - ANSWER_WORDS + 1, STRIDE):
            context = " ".join(words[max(0, cut - MAX_CONTEXT_WORDS):cut])
            answer = " ".join(words[cut:cut + ANSWER_WORDS])
            if is_prose(answer) and context not in seen and answer not in seen:
                cands.append((d, context, answer))
    rng.shuffle(cands)
    cands = cands[:MAX_ITEMS]
    items = []
    for k, (d, context, answer) in enumerate(cands):
        others = [c for c in cands if c[0] != d]
        distractors = []
        for _, _, other in rng.sample(others, len(others)):
            if other != answer and other not in distractors:
                distractors.append(other)
            if len(distractors) == CHOICES - 1:
                break
        gold = k % CHOICES  # balanced: each slot holds the answer for a quarter of the items
        choices = distractors[:gold] + [answer] + distractors[gold:]
        items.append({"context": context, "choices": choices, "gold": gold})
    return items


def main(experiment: str = str(DEMO)) -> None:
    train, held = splits(experiment)
    items = build(train, held)
    with JSONL.open("w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    INFO.write_text(json.dumps({"python": python_version(), "experiment": Path(experiment).name,
                                "held_out_documents": len(held), "items": len(items)}, indent=1) + "\n")
    print(f"{JSONL}: {len(items)} items from {len(held)} held-out documents (Python {python_version()})")


if __name__ == "__main__":
    main(*sys.argv[1:2])
