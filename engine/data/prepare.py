"""`prepare`: read the documents, tokenize them, pack each split into a token file.

    reader thread: records -> held-out routing -> batches of ~1 MB of text
    tokenizer threads (IN_FLIGHT batches at once): Rust batch encode (all cores, GIL
        released) -> one numpy array per batch with EOS after every document
    main thread: append to <split>.bin in a build dir, in order -> commit (rename) -> meta.json

Reading/JSON parsing, tokenizing and writing overlap, and the only per-token Python work is
turning the tokenizer's id lists into numpy. A result whose inputs are unchanged is reused.
"""

from __future__ import annotations

import errno
import json
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.contract import RunLayout, human_count, now_iso, read_json, tokenizer_source
from engine.contract.stage_context import StageContext
from engine.data import tokenizer as tk
from engine.data.dataset import META_FILE, SPLITS, short_split_file
from engine.data.pack import SplitWriter, commit, new_build_dir
from engine.data.progress import PrepareProgress, split_summary
from engine.data.sources import Corpus, Part, resolve_corpus
from engine.errors import UserError

FORMAT = 1  # bump when the packed layout changes: older results are rebuilt
BATCH_CHARS = 1 << 20  # text per tokenizer call: big enough to keep every core busy
BATCH_DOCS = 8192
QUEUE_DEPTH = 4  # batches read ahead of the tokenizer
IN_FLIGHT = 2  # batches being tokenized at once (see pack_streams)


@dataclass
class Stream:
    """Parts read in order; `route[i]` is the split of record i (None: all go to `split`)."""

    parts: list[Part]
    split: str
    route: np.ndarray | None = None

    def records(self) -> Iterator[str]:
        for part in self.parts:
            yield from part.records()

    def count(self) -> int:
        return sum(p.count() for p in self.parts)


# ---- planning ---------------------------------------------------------------------------


def plan_streams(corpus: Corpus, data: Any) -> tuple[list[Stream], list[str]]:
    """Streams to read, and the splits held out from train (by a seeded permutation)."""
    parts = corpus.parts()
    train = Stream(parts["train"], "train")
    held = [s for s in ("validation", "test")
            if s not in parts and (s == "validation" or data.test_fraction > 0)]
    n = train.count()
    if n == 0:
        raise UserError(f"{corpus.description}: the dataset is empty (no documents for train); "
                        "check the files or data.dataset")
    if held:
        if n < len(held) + 1:
            raise UserError(f"{corpus.description}: only {n} document(s), too few to hold out "
                            f"{' and '.join(held)}; add documents or give data.validation_files")
        fractions = {"validation": data.validation_fraction, "test": data.test_fraction}
        perm = np.random.default_rng(data.seed).permutation(n)
        route = np.zeros(n, dtype=np.uint8)
        lo = 0
        for s in held:
            k = max(1, round(fractions[s] * n))
            k = min(k, n - lo - 1)  # always leave train at least one document
            route[perm[lo:lo + k]] = SPLITS.index(s)
            lo += k
        train.route = route
    streams = [train] + [Stream(parts[s], s) for s in ("validation", "test") if s in parts]
    return streams, held


# ---- reading ahead ------------------------------------------------------------------------


class _Reader(threading.Thread):
    """Reads records, routes them to splits and queues batches of texts for the tokenizer."""

    def __init__(self, streams: list[Stream], writers: dict[str, SplitWriter]):
        super().__init__(daemon=True, name="prepare-reader")
        self.streams = streams
        self.writers = writers
        self.q: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self.stop = threading.Event()

    def _put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        try:
            for stream in self.streams:
                self._read(stream)
            self._put(None)
        except BaseException as e:  # handed to the main thread, which re-raises it
            self._put(e)

    def _read(self, stream: Stream) -> None:
        names = SPLITS
        batches: dict[str, list[str]] = {}
        chars: dict[str, int] = {}
        seen = 0  # records read since the last batch was queued (for progress)
        route = stream.route
        for i, text in enumerate(stream.records()):
            seen += 1
            split = names[route[i]] if route is not None else stream.split
            w = self.writers[split]
            if w.full:  # data.max_tokens reached
                if route is None:
                    break
                continue
            if not text or text.isspace():
                continue
            b = batches.setdefault(split, [])
            b.append(text)
            chars[split] = chars.get(split, 0) + len(text)
            if chars[split] >= BATCH_CHARS or len(b) >= BATCH_DOCS:
                self._put((split, b, seen))
                batches[split], chars[split], seen = [], 0, 0
            if self.stop.is_set():
                return
        for split, b in batches.items():
            if b:
                self._put((split, b, seen))
                seen = 0
        if seen:
            self._put((stream.split, [], seen))

    def items(self) -> Iterator[tuple[str, list[str], int]]:
        self.start()
        while True:
            item = self.q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def pack_streams(streams: list[Stream], writers: dict[str, SplitWriter],
                 encode: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
                 progress: PrepareProgress, in_flight: int | None = None) -> None:
    """Tokenize the reader's batches and write them in order.

    `in_flight` batches are tokenized at once (threads; the Rust tokenizer releases the
    GIL): while one batch waits for its longest document, the next keeps the cores busy.
    """
    in_flight = in_flight or IN_FLIGHT
    reader = _Reader(streams, writers)
    pending: deque[tuple[str, int, Future | None]] = deque()

    def finish_one() -> None:
        split, seen, fut = pending.popleft()
        written = writers[split].add(*fut.result()) if fut is not None else 0
        progress.advance(records=seen, tokens=written, split=split)

    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="tokenize") as pool:
        try:
            for split, texts, seen in reader.items():
                busy = texts and not writers[split].full
                pending.append((split, seen, pool.submit(encode, texts) if busy else None))
                while len(pending) > in_flight:
                    finish_one()
            while pending:
                finish_one()
        finally:
            reader.stop.set()
            for _, _, fut in pending:
                if fut is not None:
                    fut.cancel()


# ---- the whole step ---------------------------------------------------------------------


def _train_texts(stream: Stream) -> Iterator[str]:
    for i, text in enumerate(stream.records()):
        if stream.route is None or stream.route[i] == 0:
            yield text


def _normalise(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True))


def reusable(data_dir: Path, inputs: dict[str, Any], trained_tokenizer: bool) -> dict[str, Any] | None:
    """The existing meta.json when it was built from exactly these inputs and its files are whole."""
    meta = read_json(data_dir / META_FILE)
    if not meta or meta.get("inputs") != inputs:
        return None
    if short_split_file(data_dir, meta) is not None:
        return None
    if trained_tokenizer:
        tok_dir = data_dir / "tokenizer"
        try:
            if tk.tokenizer_hash(tk.load_tokenizer(str(tok_dir))) != meta.get("tokenizer_hash"):
                return None
        except UserError:
            return None
    return meta


def prepare(exp: Any, layout: RunLayout, log: Callable[[str], None] = print,
            status: Callable[..., None] | None = None, tty: bool | None = None) -> dict[str, Any]:
    """Prepare the data of `exp` into `layout.data_dir`; returns its meta.json."""
    data = exp.data
    data_dir = layout.data_dir

    def inputs_of(source: Any, tokenizer: Any) -> dict[str, Any]:
        """Everything the packed result depends on (compared with meta.json's for reuse)."""
        return _normalise({
            "format": FORMAT,
            "source": source,
            "tokenizer": tokenizer,
            "text_field": data.text_field,
            "validation_fraction": data.validation_fraction,
            "test_fraction": data.test_fraction,
            "seed": data.seed,
            "max_tokens": data.max_tokens,
        })

    if data.prepared:
        from engine.data.prepared import use_prepared

        return check_seq_length(use_prepared(exp, layout, log, inputs_of, reusable), data.seq_length)
    tk.set_threads(data.workers)
    corpus = resolve_corpus(data, exp.source)
    train_vocab = exp.model.tokenizer_train_vocab
    tok_src = tokenizer_source(exp, layout)
    tok = None if train_vocab else tk.load_tokenizer(tok_src)
    inputs = inputs_of(corpus.fingerprint,
                       {"train_vocab": train_vocab} if train_vocab else {"hash": tk.tokenizer_hash(tok)})
    old = reusable(data_dir, inputs, bool(train_vocab))
    if old is not None:
        log(f"prepare: reusing {data_dir} (source, tokenizer and settings unchanged): {split_summary(old)}")
        return check_seq_length(old, data.seq_length)

    t0 = time.perf_counter()
    build = new_build_dir(data_dir)
    writers: dict[str, SplitWriter] = {}
    try:
        log(f"prepare: reading {corpus.description}")
        streams, held = plan_streams(corpus, data)
        if train_vocab:
            log(f"prepare: training a byte-level BPE tokenizer ({train_vocab} tokens) on the training text")
            tok = tk.train_bpe(tk.capped_texts(_train_texts(streams[0])), train_vocab, build / "tokenizer")
        assert tok is not None
        dtype = tk.token_dtype(tok)
        splits = [s.split for s in streams] + held
        writers = {s: SplitWriter(build, s, dtype, cap=data.max_tokens if s == "train" else None) for s in splits}
        progress = PrepareProgress(sum(s.count() for s in streams), log=log, status=status, tty=tty)
        try:
            pack_streams(streams, writers, tk.make_encoder(tok, dtype), progress)
        finally:
            progress.close()
        for w in writers.values():
            w.close()
        _check_not_empty(writers, held, corpus, data)
        seconds = time.perf_counter() - t0
        total = sum(w.tokens for w in writers.values())
        meta = {
            "format": FORMAT,
            "source": corpus.description,
            "tokenizer": tok_src,
            "tokenizer_hash": tk.tokenizer_hash(tok),
            "vocab_size": len(tok),
            "dtype": dtype.name,
            "eos_token_id": tok.eos_token_id,
            "bos_token_id": tok.bos_token_id,
            "splits": {s: {"tokens": w.tokens, "documents": w.documents, "held_out": s in held,
                           "truncated": w.truncated} for s, w in writers.items()},
            "inputs": inputs,
            "created_at": now_iso(),
            "seconds": round(seconds, 3),
            "tokens_per_s": round(total / max(seconds, 1e-9)),
        }
        check_seq_length(meta, data.seq_length)  # before the data is kept
        commit(build, data_dir, splits, meta, tokenizer=bool(train_vocab))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while writing {e.filename or data_dir}: free space there or set "
                            "runs_dir to a disk with room; nothing was kept") from None
        raise
    finally:
        for w in writers.values():
            w.abort()
        shutil.rmtree(build, ignore_errors=True)
    log(f"prepare: done in {seconds:.1f} s, {human_count(meta['tokens_per_s'])} tokens/s: {split_summary(meta)} "
        f"-> {data_dir}")
    return meta


def check_seq_length(meta: dict[str, Any], seq_length: int) -> dict[str, Any]:
    """The train and validation splits hold a window of seq_length + 1 tokens each (training reads
    both); `meta` itself when they do. The test split is read by eval only, which says so itself."""
    for split, info in meta["splits"].items():
        if split == "test":
            continue
        tokens = int(info["tokens"])
        if tokens < seq_length + 1:
            raise UserError(f"data.seq_length: {seq_length} is longer than the {split} split ({tokens} tokens); "
                            f"set seq_length to at most {max(tokens - 1, 1)}, or give more data")
    return meta


def _check_not_empty(writers: dict[str, SplitWriter], held: list[str], corpus: Corpus, data: Any) -> None:
    for split, w in writers.items():
        if w.tokens:
            continue
        if split == "train":
            raise UserError(f"{corpus.description}: the dataset is empty (no text in field "
                            f"'{data.text_field}' of any training document); check the files")
        if split in held:
            raise UserError(f"the held-out {split} split is empty (the chosen documents have no text); "
                            f"raise data.{split}_fraction or give data.{split}_files")
        raise UserError(f"data.{split}_files: no text in field '{data.text_field}'; check those files")


def prepare_stage(ctx: StageContext) -> None:
    """Stage body of `prepare` (see engine.cli.STAGE_BODIES)."""
    prepare(ctx.exp, ctx.layout, log=ctx.log, status=ctx.progress if ctx.is_main else None)
