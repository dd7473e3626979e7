"""The run directory: the contract between the engine (writer) and the TUI/CLI (readers).

    runs/<name>/experiment.toml, status.json, <stage>/{status.json, metrics.jsonl, stdout.log,
    checkpoints/, model/, importance.json}

JSON documents are written atomically (temp file + rename); metrics are append-only.
Readers tolerate a half-written last line and a stage that died without saying so.
No torch import here: the TUI reads run directories through this module.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STATES = ("pending", "running", "succeeded", "failed", "cancelled")
HEARTBEAT_S = 10.0  # how often a running stage refreshes updated_at
STALE_S = 300.0  # a heartbeat older than this from another host counts as dead


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def human_count(n: float, digits: int = 2) -> str:
    """1234567 -> '1.23M' (B, M, k); below a thousand the plain number."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.{digits}f}{unit}"
    return f"{n:.0f}"


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


# ---- atomic writes ------------------------------------------------------------------


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file so that readers see either the old or the new content, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; others sharing a runs folder must read it
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON document, or None when it is missing or unreadable (never raises)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


# ---- metrics.jsonl --------------------------------------------------------------------


def append_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Append one metrics line; non-finite numbers become null (JSON has no NaN)."""
    rec = {"time": now_iso(), **record}
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
    line = json.dumps(clean, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def read_metrics(path: str | Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete metric lines from byte `offset`; returns (records, new offset).

    A last line without its newline is not consumed, so a later call picks it up whole.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    out: list[dict[str, Any]] = []
    for line in data[:end].splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a corrupt line (e.g. after a crash mid-write) is skipped
        if isinstance(rec, dict):
            out.append(rec)
    return out, offset + end


def truncate_metrics_after(path: str | Path, step: int) -> None:
    """On resume: drop lines logged after the checkpoint's step (they will be logged again)."""
    p = Path(path)
    if not p.exists():
        return
    records, _ = read_metrics(p)
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    write_atomic(p, "".join(json.dumps(r) + "\n" for r in kept))


# ---- status.json ----------------------------------------------------------------------


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def effective_state(status: dict[str, Any] | None) -> str:
    """The state a reader should show: a 'running' stage whose process is gone is 'failed'."""
    if not status:
        return "pending"
    state = status.get("state", "pending")
    if state != "running":
        return state if state in STATES else "pending"
    if status.get("host") == socket.gethostname():
        return "running" if pid_alive(status.get("pid")) else "failed"
    beat = parse_iso(status.get("updated_at"))
    if beat and (datetime.now(timezone.utc) - beat).total_seconds() > STALE_S:
        return "failed"
    return "running"


def read_status(path: str | Path) -> dict[str, Any] | None:
    """status.json with `state` replaced by the effective state (dead pid -> failed)."""
    st = read_json(path)
    if st is None:
        return None
    eff = effective_state(st)
    if eff != st.get("state"):
        st = {**st, "state": eff}
        if eff == "failed" and not st.get("error"):
            st["error"] = {"type": "ProcessDied", "message": "the process ended without reporting (killed?)"}
    return st


def stage_status_doc(stage: str, config_hash: str | None, **fields: Any) -> dict[str, Any]:
    """A stage's status.json document (this process, state pending unless `fields` say otherwise)."""
    doc: dict[str, Any] = {
        "stage": stage,
        "state": "pending",
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "host": socket.gethostname(),
        "gpus": [],
        "step": 0,
        "total_steps": None,
        "started_at": None,
        "updated_at": now_iso(),
        "ended_at": None,
        "config_hash": config_hash,
        "error": None,
    }
    doc.update(fields)
    return doc


class StageStatus:
    """Writes a stage's status.json; a daemon thread keeps the heartbeat fresh while running."""

    def __init__(self, stage_dir: str | Path, stage: str, config_hash: str | None = None):
        self.path = Path(stage_dir) / "status.json"
        self.doc = stage_status_doc(stage, config_hash)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        with self._lock:
            self.doc["updated_at"] = now_iso()
            write_json(self.path, self.doc)

    def start(self, total_steps: int | None = None, gpus: list[int] | None = None, **extra: Any) -> None:
        self.doc.update(state="running", started_at=now_iso(), ended_at=None, error=None,
                        total_steps=total_steps, gpus=gpus or [], **extra)
        self._write()
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._write()

    def update(self, step: int | None = None, **fields: Any) -> None:
        if step is not None:
            self.doc["step"] = step
        self.doc.update(fields)
        self._write()

    def finish(self, state: str, error: BaseException | str | None = None) -> None:
        assert state in STATES
        self._stop.set()
        err = None
        if isinstance(error, BaseException):
            err = {"type": type(error).__name__, "message": str(error).strip().splitlines()[0] if str(error) else ""}
        elif error:
            err = {"type": "Error", "message": str(error)}
        self.doc.update(state=state, ended_at=now_iso(), error=err)
        self._write()


# ---- the run layout -------------------------------------------------------------------


class RunLayout:
    """Paths inside one run directory; the single place that knows the contract's names."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    @property
    def experiment_file(self) -> Path:
        return self.root / "experiment.toml"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    def stage_status_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / "status.json"

    def metrics_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / "metrics.jsonl"

    def log_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / "stdout.log"

    def model_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / "model"

    def checkpoints_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / "checkpoints"

    def importance_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / "importance.json"

    @property
    def data_dir(self) -> Path:
        """Packed token files and meta.json, written by `prepare`."""
        return self.stage_dir("prepare")

    @property
    def tokenizer_dir(self) -> Path:
        """A tokenizer trained by `prepare` (tokenizer_train_vocab) lives here."""
        return self.stage_dir("prepare") / "tokenizer"

    @property
    def results_file(self) -> Path:
        return self.stage_dir("eval") / "results.json"

    def stages_on_disk(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "status.json").exists())


def list_runs(runs_dir: str | Path) -> list[Path]:
    """Run directories under runs_dir (those with an experiment.toml or a status.json)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and ((p / "experiment.toml").exists() or (p / "status.json").exists()))


def teacher_source(exp: Any, layout: RunLayout) -> str:
    """The teacher checkpoint: the fine-tuned one when [finetune] exists, else [model].path."""
    return str(layout.model_dir("finetune")) if exp.finetune is not None else str(exp.model.path)


def tokenizer_source(exp: Any, layout: RunLayout) -> str:
    """Where the tokenizer comes from: trained by prepare, named explicitly, or the model's own."""
    if exp.model.tokenizer_train_vocab:
        return str(layout.tokenizer_dir)
    return str(exp.model.tokenizer or exp.model.path)
