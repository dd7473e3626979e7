"""`builtin:stdlib-docs`: real English text on every machine, offline, with no file shipped.

The Python standard library's docstrings, comment blocks, the pydoc topic texts (the
language reference) and its .txt/.rst files, read from the *source files* with `ast`
(never by importing the modules: that is slow and has side effects). The order is fixed
(sorted paths), so the corpus is deterministic for a given Python installation.
"""

from __future__ import annotations

import ast
import os
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

BUILTINS = ("builtin:stdlib-docs",)
VERSION = 1  # bump when the extraction changes, so prepared data is rebuilt
# Test suites are most of the stdlib's source but little prose, and slow to parse.
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_TEXT_SUFFIXES = (".txt", ".rst")
_MIN_COMMENT_CHARS = 40  # shorter comment blocks are mostly markers and lint pragmas


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def fingerprint() -> dict[str, object]:
    return {"builtin": "stdlib-docs", "version": VERSION, "python": sys.version, "stdlib": str(stdlib_root())}


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Source and text files of the stdlib, in a fixed order."""
    root = root or stdlib_root()
    out: list[Path] = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS and not x.startswith(".") and "-" not in x)
        out += [Path(d) / f for f in sorted(files) if f.endswith((".py", *_TEXT_SUFFIXES))]
    return out


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or path.stem


def _docstrings(body: list[ast.stmt], prefix: str, out: list[str]) -> None:
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{node.name}"
            doc = ast.get_docstring(node)
            if doc:
                kind = "class" if isinstance(node, ast.ClassDef) else "def"
                out.append(f"{kind} {name}:\n{doc}")
            _docstrings(node.body, f"{name}.", out)


def _comment_blocks(source: str) -> list[str]:
    blocks: list[str] = []
    cur: list[str] = []
    for line in source.splitlines():
        s = line.lstrip()
        if s.startswith("#") and not s.startswith(("#!", "# -*-")):
            cur.append(s.lstrip("#").strip())
            continue
        if cur:
            text = "\n".join(cur).strip()
            if len(text) >= _MIN_COMMENT_CHARS:
                blocks.append(text)
            cur = []
    return blocks


def _pydoc_topics(tree: ast.Module) -> list[str]:
    """pydoc_data/topics.py holds the language reference as one dict literal."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            try:
                topics = ast.literal_eval(node.value)
            except ValueError:
                return []
            return [f"{k}\n\n{v.strip()}" for k, v in sorted(topics.items()) if isinstance(v, str) and v.strip()]
    return []


def file_documents(path: Path, root: Path) -> list[str]:
    """The documents of one stdlib file (0 to a few)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    if path.suffix in _TEXT_SUFFIXES:
        text = raw.decode("utf-8", errors="replace").strip()
        return [text] if text else []
    try:
        tree = ast.parse(raw, filename=str(path))
    except (SyntaxError, ValueError):
        return []  # e.g. lib2to3 test data written in Python 2
    name = _module_name(path, root)
    if name == "pydoc_data.topics":
        return _pydoc_topics(tree)
    docs: list[str] = []
    module_doc = ast.get_docstring(tree)
    parts = [f"module {name}:\n{module_doc}"] if module_doc else []
    _docstrings(tree.body, f"{name}.", parts)
    if parts:
        docs.append("\n\n".join(parts))
    comments = _comment_blocks(raw.decode("utf-8", errors="replace"))
    if comments:
        docs.append(f"comments in {name}:\n\n" + "\n\n".join(comments))
    return docs


@lru_cache(maxsize=1)
def stdlib_documents() -> tuple[str, ...]:
    """All documents, in a fixed order (about 3.7 MB; parsing takes a couple of seconds)."""
    root = stdlib_root()
    return tuple(d for path in stdlib_files(root) for d in file_documents(path, root))
