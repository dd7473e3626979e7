"""`data.prepared`: use a folder another `prepare` wrote (e.g. on a CPU box, carried to a GPU
machine) instead of reading and tokenizing the sources again.

The folder's files are hard-linked (or copied) into this run's prepare/ directory, after
checking that they are whole and were tokenized by the tokenizer this experiment uses.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.contract import RunLayout, tokenizer_source
from engine.data import tokenizer as tk
from engine.data.dataset import META_FILE, read_meta, short_split_file
from engine.data.pack import commit, new_build_dir
from engine.data.progress import split_summary
from engine.errors import UserError


def _resolve_dir(pattern: str, experiment_file: str | None) -> Path:
    p = Path(pattern).expanduser()
    bases = list(dict.fromkeys([Path.cwd()] + ([Path(experiment_file).resolve().parent] if experiment_file else [])))
    for c in [p] if p.is_absolute() else [b / p for b in bases]:
        if c.is_dir():
            return c.resolve()
    raise UserError(f"data.prepared: no folder '{pattern}' (looked in {' or '.join(map(str, bases))}); "
                    "give a folder written by `slimlab-engine prepare` (meta.json + <split>.bin)")


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows one (prepared splits are read-only), else a copy."""
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def check_whole(folder: Path, meta: dict[str, Any]) -> None:
    short = short_split_file(folder, meta)
    if short is not None:
        b, want = short
        raise UserError(f"data.prepared: {b} is missing or not {want:,} bytes as meta.json says; "
                        "copy the whole folder again")


def use_prepared(exp: Any, layout: RunLayout, log: Callable[[str], None], inputs_of: Callable[..., Any],
                 reusable: Callable[..., Any]) -> dict[str, Any]:
    folder = _resolve_dir(exp.data.prepared, exp.source)
    try:
        meta = read_meta(folder)
    except UserError:
        raise UserError(f"data.prepared: {folder} has no readable meta.json; "
                        "give a folder written by `slimlab-engine prepare`") from None
    check_whole(folder, meta)
    trained = bool(exp.model.tokenizer_train_vocab)
    if trained and not (folder / "tokenizer").is_dir():
        raise UserError(f"data.prepared: model.tokenizer_train_vocab is set but {folder} has no tokenizer/ "
                        "folder; drop tokenizer_train_vocab and set model.tokenizer")
    tok_src = str(folder / "tokenizer") if trained else tokenizer_source(exp, layout)
    tok_hash = tk.tokenizer_hash(tk.load_tokenizer(tok_src))
    if tok_hash != meta.get("tokenizer_hash"):
        raise UserError(f"data.prepared: {folder} was tokenized by another tokenizer ({meta.get('tokenizer')}) "
                        f"than '{tok_src}'; set model.tokenizer to the one it was prepared with")
    meta_sha = hashlib.sha256((folder / META_FILE).read_bytes()).hexdigest()[:16]
    inputs = inputs_of({"prepared": str(folder), "meta": meta_sha}, {"hash": tok_hash})
    old = reusable(layout.data_dir, inputs, trained)
    if old is not None:
        log(f"prepare: reusing {layout.data_dir} (same prepared folder {folder}): {split_summary(old)}")
        return old
    build = new_build_dir(layout.data_dir)
    try:
        for split in meta["splits"]:
            for name in (f"{split}.bin", f"{split}.idx.npy"):
                link_or_copy(folder / name, build / name)
        if trained:
            shutil.copytree(folder / "tokenizer", build / "tokenizer")
        new_meta = {**meta, "inputs": inputs, "prepared_from": str(folder)}
        commit(build, layout.data_dir, list(meta["splits"]), new_meta, tokenizer=trained)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    log(f"prepare: done, linked the prepared data in {folder}: {split_summary(new_meta)} -> {layout.data_dir}")
    return new_meta
