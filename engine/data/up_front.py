"""What `[data]` can be checked for before anything is written (engine/orchestration/preflight.py), beyond
the files decoding (engine/data/sources.py check_files): the source exists, and seq_length fits the data
where its size is known without tokenizing.

- `data.prepared`: the folder, its meta.json, its files whole, its train and validation splits each
  holding a window of seq_length + 1 tokens (meta.json counts them).
- local files: a token covers at least one byte and each document adds one EOS, so a split of B bytes
  holds at most 2B tokens; a seq_length beyond that cannot fit. Closer cases are known after tokenizing:
  prepare says so then (data.seq_length, exit 2) and keeps nothing.

numpy, no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import UserError

PLAIN = (".jsonl", ".json", ".txt")  # sizes on disk that bound the text (not compressed, not parquet)


def check_data_up_front(data: Any, experiment_file: str | None) -> None:
    """UserError (one line, the key and the fix) on the first problem found."""
    from engine.data import builtin

    if data.dataset and data.dataset.startswith("builtin:") and data.dataset not in builtin.BUILTINS:
        raise UserError(f"data.dataset: unknown builtin '{data.dataset}'; builtins: {', '.join(builtin.BUILTINS)}")
    if data.prepared:
        _check_prepared(data, experiment_file)
        return
    if data.max_tokens is not None and data.max_tokens < data.seq_length + 1:
        raise UserError(f"data.max_tokens: {data.max_tokens} caps the train split below one window of "
                        f"seq_length + 1 = {data.seq_length + 1} tokens; raise it, or lower seq_length")
    _check_size_bound(data, experiment_file)


def _check_prepared(data: Any, experiment_file: str | None) -> None:
    from engine.data.dataset import read_meta
    from engine.data.prepared import _resolve_dir, check_whole

    folder = _resolve_dir(data.prepared, experiment_file)
    try:
        meta = read_meta(folder)
        splits = meta["splits"]
        check_whole(folder, meta)
    except UserError:
        raise UserError(f"data.prepared: {folder} has no readable meta.json; give a folder written by "
                        "`slimlab-engine prepare` (meta.json + <split>.bin)") from None
    except (KeyError, TypeError, ValueError):
        raise UserError(f"data.prepared: {folder}/meta.json is not one `slimlab-engine prepare` wrote; give "
                        "such a folder") from None
    for split in ("train", "validation"):
        tokens = (splits.get(split) or {}).get("tokens") if isinstance(splits, dict) else None
        if isinstance(tokens, int) and tokens < data.seq_length + 1:
            raise UserError(f"data.seq_length: {data.seq_length} is longer than the {split} split of "
                            f"{folder} ({tokens:,} tokens); set it to at most {max(tokens - 1, 1)}, or give more data")


def _check_size_bound(data: Any, experiment_file: str | None) -> None:
    from engine.data.sources import _local_files

    for split, paths in _local_files(data, experiment_file).items():
        if split == "test" or not paths or any(_plain_suffix(p) not in PLAIN for p in paths):
            continue
        size = sum(p.stat().st_size for p in paths)
        if 2 * size < data.seq_length + 1:
            names = paths[0].name + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")
            raise UserError(f"data.seq_length: {data.seq_length} is longer than the {split} data can be "
                            f"({names}: {size:,} bytes, at most {2 * size:,} tokens); lower seq_length, "
                            "or give more data")


def _plain_suffix(path: Path) -> str:
    return path.suffix.lower()
