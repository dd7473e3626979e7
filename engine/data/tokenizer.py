"""Tokenizers for `prepare`: load one, train a byte-level BPE, hash it, batch-encode to numpy.

transformers/tokenizers are imported inside the functions so that `import engine.data` stays
light (the training loop imports PackedDataset from here).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError
from engine.models.locate import check_tokenizer_path

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
TRAIN_CHARS_MAX = 200_000_000  # text fed to the BPE trainer at most (memory and time)


def load_tokenizer(source: str) -> Any:
    """AutoTokenizer.from_pretrained(source), with one clear line when that is impossible."""
    from transformers import AutoTokenizer

    check_tokenizer_path(source, key=f"tokenizer '{source}'")  # a missing folder said as such, not as a bad hub id
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception as e:  # OSError, ValueError, HF validation errors, a corrupt tokenizer.json...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"tokenizer '{source}' cannot be loaded ({first}); set model.tokenizer to a directory "
                        "with tokenizer.json or a hub id, or set model.tokenizer_train_vocab") from None
    if tok.eos_token_id is None:
        raise UserError(f"tokenizer '{source}' has no EOS token, which separates documents; "
                        "use a causal-LM tokenizer or model.tokenizer_train_vocab")
    return tok


def tokenizer_hash(tok: Any) -> str:
    """A hash of what decides the token ids: the whole tokenizer.json minus runtime settings."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        doc = json.loads(backend.to_str())
        doc.pop("truncation", None)  # transformers toggles these per call
        doc.pop("padding", None)
        blob = json.dumps(doc, sort_keys=True)
    else:
        blob = json.dumps(sorted(tok.get_vocab().items()))
    blob += f"|eos={tok.eos_token_id}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def id_upper_bound(tok: Any) -> int:
    """1 + the largest token id (decides uint16 vs uint32)."""
    return max(len(tok), max(tok.get_vocab().values(), default=0) + 1)


def token_dtype(tok: Any) -> np.dtype:
    return np.dtype(np.uint16) if id_upper_bound(tok) <= 1 << 16 else np.dtype(np.uint32)


def set_threads(workers: int) -> None:
    """Size the Rust tokenizer's thread pool; only effective before its first parallel call."""
    n = str(max(1, min(workers, os.cpu_count() or 1)))
    os.environ.setdefault("RAYON_NUM_THREADS", n)
    os.environ.setdefault("RAYON_RS_NUM_THREADS", n)


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: Path) -> Any:
    """Train a byte-level BPE on `texts`, save it as a transformers fast tokenizer in
    `out_dir` and load it back the way every later stage will (AutoTokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, **SPECIAL_TOKENS)
    fast.save_pretrained(str(out_dir))
    return load_tokenizer(str(out_dir))


def capped_texts(texts: Iterable[str], max_chars: int = TRAIN_CHARS_MAX) -> Iterable[list[str]]:
    """Batches of non-empty texts for the BPE trainer, up to `max_chars` in all."""
    batch: list[str] = []
    total = 0
    for t in texts:
        if not t or t.isspace():
            continue
        batch.append(t)
        total += len(t)
        if len(batch) >= 1000 or total >= max_chars:
            yield batch
            batch = []
            if total >= max_chars:
                return
    if batch:
        yield batch


def make_encoder(tok: Any, dtype: np.dtype) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
    """texts -> (flat token ids with EOS after every document, tokens per document incl. EOS).

    Calls the Rust tokenizer directly (one batch call, multithreaded, GIL released, no
    offsets); the only per-token Python work is turning its id lists into one numpy array.
    """
    eos = int(tok.eos_token_id)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        batch_fn = getattr(backend, "encode_batch_fast", None) or backend.encode_batch

        def ids_of(texts: list[str]) -> list[list[int]]:
            return [e.ids for e in batch_fn(texts, add_special_tokens=False)]
    else:  # a slow (Python) tokenizer

        def ids_of(texts: list[str]) -> list[list[int]]:
            return tok(texts, add_special_tokens=False)["input_ids"]

    def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = ids_of(texts)
        body_lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        body = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(body_lens.sum()))
        flat = np.insert(body, np.cumsum(body_lens), np.asarray(eos, dtype=dtype))
        return flat, body_lens + 1

    return encode
