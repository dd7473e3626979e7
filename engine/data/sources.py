"""Where documents come from: local files (per split, globs allowed), a hub dataset, a builtin.

A split's source is a list of `Part`s. A part yields one string per *record* (a JSON line,
a parquet row, a paragraph of a .txt file...), "" for an empty record, so that record
ordinals are stable: the held-out validation/test documents are chosen by ordinal.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from itertools import islice
from pathlib import Path
from typing import IO, Any

from engine.data import builtin
from engine.errors import UserError

SPLITS = ("train", "validation", "test")
SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")  # .jsonl/.json/.txt may also end in .gz
# split names used by hub datasets -> ours
_HUB_SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                    "dev": "validation", "test": "test"}


@dataclass
class Part:
    """One file (or hub split, or builtin corpus): a sequence of records."""

    label: str  # shown in messages: a path, "wikitext[train]", ...
    count: Callable[[], int]  # number of records (empty ones included)
    records: Callable[[], Iterator[str]]  # one string per record, "" when empty


@dataclass
class Corpus:
    """The resolved `[data]` source: cheap to build (no text read), loaded on demand."""

    description: str
    fingerprint: dict[str, Any]
    loader: Callable[[], dict[str, list[Part]]]  # split -> parts, for the splits the source has
    _parts: dict[str, list[Part]] | None = field(default=None, repr=False)

    def parts(self) -> dict[str, list[Part]]:
        if self._parts is None:
            self._parts = self.loader()
        return self._parts


# ---- local files ----------------------------------------------------------------------


def _suffix(path: Path) -> str:
    name = path.name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    return os.path.splitext(name)[1]


def _open(path: Path) -> IO[bytes]:
    if not path.name.lower().endswith(".gz"):
        return open(path, "rb")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":  # gzip's own error (BadGzipFile) came as a traceback from the up-front check
        raise UserError(f"{path}: named .gz but not gzip-compressed; rename it without .gz, or compress it "
                        "with gzip")
    return gzip.open(path, "rb")


def _text_of(rec: Any, text_field: str, where: str) -> str:
    """The text of one JSON record, or a one-line UserError naming what is there instead."""
    if isinstance(rec, str):
        return rec
    if not isinstance(rec, dict):
        raise UserError(f"{where}: a JSON {type(rec).__name__}, not an object with a '{text_field}' field; "
                        "give one JSON object per document")
    if text_field not in rec:
        fields = ", ".join(map(str, rec)) or "none"
        raise UserError(f"data.text_field: '{text_field}' is not a field of {where}; fields there: {fields}; "
                        "set text_field to the one that holds the text")
    value = rec[text_field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{text_field}' is a {type(value).__name__}, not text; "
                        "set data.text_field to a text field")
    return value


def _jsonl_records(path: Path, text_field: str) -> Iterator[str]:
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                yield ""
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e}); "
                                "a .jsonl file holds one JSON object per line") from None
            yield _text_of(rec, text_field, f"{path}:{lineno}")


def _count_lines(path: Path) -> int:
    n, last, size = 0, b"\n", 0
    with _open(path) as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            n += chunk.count(b"\n")
            last, size = chunk[-1:], size + len(chunk)
    return n + (1 if size and last != b"\n" else 0)


def _is_json_array(path: Path) -> bool:
    with _open(path) as f:
        head = f.read(4096).lstrip()
    return head[:1] == b"["


def _json_array_records(path: Path, text_field: str) -> list[str]:
    try:
        with _open(path) as f:
            data = json.load(f)
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); give a JSON array of objects or JSON Lines") from None
    return [_text_of(rec, text_field, f"{path}[{i}]") for i, rec in enumerate(data)]


def _split_paragraphs(text: str) -> list[str]:
    # A .txt file holds documents separated by blank lines.
    return [p.strip() for p in re.split(r"\n[ \t\r]*\n", text)]


def _txt_records(path: Path) -> list[str]:
    with _open(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None
    paras = _split_paragraphs(text)
    return paras if any(paras) else []


def _parquet_file(path: Path, text_field: str) -> Any:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a non-parquet file
        raise UserError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise UserError(f"data.text_field: '{text_field}' is not a column of {path}; columns there: "
                        f"{', '.join(names)}; set text_field to the one that holds the text")
    return pf


def _parquet_records(path: Path, text_field: str) -> Iterator[str]:
    pf = _parquet_file(path, text_field)
    for batch in pf.iter_batches(batch_size=4096, columns=[text_field]):
        for i, v in enumerate(batch.column(0).to_pylist()):
            if v is None:
                yield ""
            elif isinstance(v, str):
                yield v
            else:
                raise UserError(f"{path}: column '{text_field}' holds {type(v).__name__} values, not text "
                                f"(row {i}); set data.text_field to a text column")


def file_part(path: Path, text_field: str) -> Part:
    suffix = _suffix(path)
    if suffix == ".parquet":
        return Part(str(path), lambda: _parquet_file(path, text_field).metadata.num_rows,
                    lambda: _parquet_records(path, text_field))
    if suffix in (".txt", ".json") and (suffix == ".txt" or _is_json_array(path)):
        load = cache(lambda: _txt_records(path) if suffix == ".txt" else _json_array_records(path, text_field))
        return Part(str(path), lambda: len(load()), lambda: iter(load()))
    # .jsonl, and .json files in JSON Lines form
    return Part(str(path), lambda: _count_lines(path), lambda: _jsonl_records(path, text_field))


def resolve_files(key: str, patterns: list[str], bases: list[Path]) -> list[Path]:
    """Expand the paths/globs of `data.<key>`: relative to the current directory, else to the
    experiment file's directory. Missing files, empty globs and unknown types are UserErrors."""
    out: list[Path] = []
    for pattern in patterns:
        found = _resolve_one(key, pattern, bases)
        for p in found:
            if _suffix(p) not in SUFFIXES:
                raise UserError(f"data.{key}: '{p}' is not a supported file type; "
                                f"use {', '.join(SUFFIXES)} (optionally .gz)")
        out += [p for p in found if p not in out]
    return out


def _resolve_one(key: str, pattern: str, bases: list[Path]) -> list[Path]:
    p = Path(pattern).expanduser()
    candidates = [p] if p.is_absolute() else [b / p for b in bases]
    magic = glob.has_magic(pattern)
    for c in candidates:
        if magic:
            hits = sorted(Path(m) for m in glob.glob(str(c), recursive=True) if os.path.isfile(m))
            if hits:
                return hits
        elif c.is_file():
            return [c]
        elif c.is_dir():
            raise UserError(f"data.{key}: '{pattern}' is a directory; name files or a glob such as "
                            f"'{pattern.rstrip('/')}/*.jsonl'")
    where = " or ".join(str(b) for b in bases) if not p.is_absolute() else "/"
    if magic:
        raise UserError(f"data.{key}: no file matches '{pattern}' (looked in {where}); check the pattern")
    raise UserError(f"data.{key}: file not found: '{pattern}' (looked in {where}); check the path")


def _file_fingerprint(paths: list[Path]) -> list[list[Any]]:
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


# ---- hub datasets -----------------------------------------------------------------------


def _hub_parts(name: str, config: str | None, text_field: str) -> dict[str, list[Part]]:
    try:
        import datasets  # lazily: the GPU machine has no `datasets`
    except ImportError:
        raise UserError(f"data.dataset = '{name}' needs the `datasets` package (pip install datasets); "
                        "or give local train_files") from None
    what = f"'{name}'" + (f" (config '{config}')" if config else "")
    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as e:  # not found, offline, bad config... all user-fixable
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"data.dataset: cannot load {what}: {first}; check data.dataset and data.config, "
                        "or use local train_files") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = {"train": loaded}
    splits: dict[str, list[Part]] = {}
    for split_name, ds in loaded.items():
        ours = _HUB_SPLIT_NAMES.get(split_name)
        if ours is None or ours in splits:
            continue
        if text_field not in ds.column_names:
            raise UserError(f"data.text_field: '{text_field}' is not a column of {what}[{split_name}]; "
                            f"columns there: {', '.join(ds.column_names)}; set text_field to the text column")
        splits[ours] = [Part(f"{name}[{split_name}]", lambda ds=ds: len(ds),
                             lambda ds=ds: _hub_records(ds, text_field))]
    if "train" not in splits:
        raise UserError(f"data.dataset: {what} has no train split (splits: {', '.join(loaded)}); "
                        "use local train_files")
    return splits


def _hub_records(ds: Any, text_field: str) -> Iterator[str]:
    for batch in ds.select_columns([text_field]).iter(batch_size=2048):
        for v in batch[text_field]:
            yield v if isinstance(v, str) else ""


# ---- resolving [data] ---------------------------------------------------------------------


def _bases(experiment_file: str | None) -> list[Path]:
    """Where relative data paths are looked for: the current directory, then the experiment file's."""
    bases = [Path.cwd()]
    if experiment_file:
        exp_dir = Path(experiment_file).resolve().parent
        if exp_dir != bases[0]:
            bases.append(exp_dir)
    return bases


def _local_files(data: Any, experiment_file: str | None) -> dict[str, list[Path]]:
    bases = _bases(experiment_file)
    return {split: resolve_files(f"{split}_files", getattr(data, f"{split}_files"), bases)
            for split in SPLITS if getattr(data, f"{split}_files")}


def check_files(data: Any, experiment_file: str | None = None, whole_bytes: int = 64 << 20,
                sample_records: int = 1000) -> None:
    """Open and read the local files of `[data]` before anything is written, so that a missing or
    empty file, a broken JSON line or a wrong text_field is a UserError at `check` and at the start
    of `run`, not in the middle of prepare. Files up to `whole_bytes` are read whole; of larger
    ones the first `sample_records` records (prepare reads the rest with the same errors)."""
    for split, paths in _local_files(data, experiment_file).items():
        for path in paths:
            if path.stat().st_size == 0:
                raise UserError(f"data.{split}_files: {path} is empty; give files that hold text")
            small = path.stat().st_size <= whole_bytes
            if not small and _suffix(path) in (".txt", ".json") and (_suffix(path) == ".txt" or _is_json_array(path)):
                continue  # read whole by prepare only: too large to read twice
            records = islice(file_part(path, data.text_field).records(), None if small else sample_records)
            has_text = False
            try:
                for text in records:  # every record read: a broken line anywhere raises
                    has_text = has_text or bool(text.strip())
            except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # a damaged or cut .gz
                raise UserError(f"data.{split}_files: {path} cannot be decompressed ({e}); give an intact "
                                "file") from None
            if not has_text and small:
                raise UserError(f"data.{split}_files: {path} holds no text (every record is empty)")


def resolve_corpus(data: Any, experiment_file: str | None = None) -> Corpus:
    """The `[data]` section -> a Corpus. Local paths are checked here (fail fast); hub
    datasets and the builtin corpus are loaded only when their text is needed."""
    explicit = _local_files(data, experiment_file)
    local_fp = {s: _file_fingerprint(ps) for s, ps in explicit.items()}
    field_ = data.text_field

    def local_parts() -> dict[str, list[Part]]:
        return {s: [file_part(p, field_) for p in ps] for s, ps in explicit.items()}

    if data.dataset in builtin.BUILTINS:
        def load_builtin() -> dict[str, list[Part]]:
            docs = builtin.stdlib_documents()
            return {"train": [Part(data.dataset, lambda: len(docs), lambda: iter(docs))], **local_parts()}
        return Corpus(data.dataset, {"builtin": builtin.fingerprint(), "files": local_fp}, load_builtin)
    if data.dataset and data.dataset.startswith("builtin:"):
        raise UserError(f"data.dataset: unknown builtin '{data.dataset}'; builtins: {', '.join(builtin.BUILTINS)}")
    if data.dataset:
        def load_hub() -> dict[str, list[Part]]:
            return {**_hub_parts(data.dataset, data.config, field_), **local_parts()}
        desc = data.dataset + (f"/{data.config}" if data.config else "")
        return Corpus(desc, {"dataset": data.dataset, "config": data.config, "files": local_fp}, load_hub)
    desc = ", ".join(str(p) for p in explicit["train"][:3]) + (" ..." if len(explicit["train"]) > 3 else "")
    return Corpus(desc, {"files": local_fp}, local_parts)
