"""Helpers for the training tests: a word-level tokenizer, packed data, tiny experiments.

The data is written in prepare's documented format (<run>/prepare/{split}.bin, .idx.npy,
meta.json, tokenizer/) so the training stages read it through engine.data.PackedDataset.
The text comes from a seeded Markov chain over a small word vocabulary: structured enough
that a tiny model learns it within a few dozen steps.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

WORDS = [f"w{i}" for i in range(45)]
SPECIALS = ["[EOS]", "[UNK]"]


def make_tokenizer(out_dir: Path, words: list[str] = WORDS) -> Path:
    """A word-level HF tokenizer (trained-free: the vocabulary is the word list)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="[EOS]", unk_token="[UNK]")
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def markov_tokens(n: int, vocab: int, seed: int) -> np.ndarray:
    """Token ids 2..vocab-1 from a sparse random Markov chain, EOS (0) every ~50 tokens."""
    rng = np.random.default_rng(seed)
    k = vocab - len(SPECIALS)
    trans = np.random.default_rng(1234).dirichlet(np.full(k, 0.08), size=k)  # same chain for every split
    out = np.empty(n, dtype=np.int64)
    state = 0
    for i in range(n):
        if rng.random() < 0.02:
            out[i] = 0
            continue
        state = rng.choice(k, p=trans[state])
        out[i] = state + len(SPECIALS)
    return out


def write_prepared(data_dir: Path, tokenizer_dir: Path | None = None, tokens: dict[str, int] | None = None,
                   vocab: int = len(SPECIALS) + len(WORDS), seed: int = 0) -> Path:
    tokens = tokens or {"train": 24_000, "validation": 3_000, "test": 3_000}
    data_dir.mkdir(parents=True, exist_ok=True)
    splits = {}
    for i, (split, n) in enumerate(tokens.items()):
        ids = markov_tokens(n, vocab, seed + i)
        ids.astype(np.uint16).tofile(data_dir / f"{split}.bin")
        ends = np.flatnonzero(ids == 0) + 1
        np.save(data_dir / f"{split}.idx.npy", np.concatenate([[0], ends, [n]]).astype(np.int64))
        splits[split] = {"tokens": int(n), "documents": int(len(ends) + 1)}
    meta = {"vocab_size": vocab, "dtype": "uint16", "eos_token_id": 0, "bos_token_id": None,
            "tokenizer": str(tokenizer_dir) if tokenizer_dir else None, "tokenizer_hash": None,
            "splits": splits}
    (data_dir / "meta.json").write_text(json.dumps(meta))
    if not (data_dir / "tokenizer").exists():
        make_tokenizer(data_dir / "tokenizer")
    return data_dir


ARCH = ('{model_type = "llama", hidden_size = 48, intermediate_size = 96, num_hidden_layers = 4, '
        'num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 256, '
        'tie_word_embeddings = true}')


def experiment_toml(name: str, runs_dir: Path, *, finetune: str = "", distill: str = "", prune: str = "",
                    eval_: str = "", seq: int = 32, extra: str = "") -> str:
    return f"""
name = "{name}"
runs_dir = "{runs_dir}"
[model]
init = "scratch"
dtype = "float32"
tokenizer_train_vocab = 256
arch = {ARCH}
[data]
train_files = ["unused.jsonl"]
seq_length = {seq}
{extra}
{finetune}
{prune}
{distill}
{eval_}
"""


FINETUNE = """
[finetune]
steps = 12
global_batch_size = 8
micro_batch_size = 4
lr = 3e-3
min_lr = 3e-4
warmup_steps = 2
val_interval = 4
val_batches = 4
checkpoint_interval = 4
seed = 7
"""


def load_exp(text: str, path: Path):
    from engine.config import load_experiment

    path.write_text(text)
    return load_experiment(path)


def prepared_exp(root: Path, name: str, **sections: str):
    """Experiment NAME saved as root/NAME.toml, its run under root/runs with the prepare stage's
    output already written (Markov data): ready for `run_inprocess(exp, "finetune")`."""
    exp = load_exp(experiment_toml(name, root / "runs", **sections), root / f"{name}.toml")
    write_prepared(root / "runs" / name / "prepare")
    return exp


def engine_env() -> dict[str, str]:
    """Environment for an engine subprocess: this checkout importable, one thread as in-process."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_inprocess(exp, stage: str) -> int:
    """Run one stage in this process (signal handlers restored afterwards)."""
    from engine.cli import stage_body
    from engine.orchestration.stage_process import run_stage

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        return run_stage(exp, stage, stage_body(stage))
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def write_depth_student(teacher_dir: Path, out: Path, keep: list[int]) -> None:
    """A depth-pruned copy of the teacher (what the prune stage writes), made by hand."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = AutoModelForCausalLM.from_pretrained(teacher_dir)
    t.model.layers = torch.nn.ModuleList([t.model.layers[i] for i in keep])
    t.config.num_hidden_layers = len(keep)
    for i, layer in enumerate(t.model.layers):
        layer.self_attn.layer_idx = i
    t.save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(out)
