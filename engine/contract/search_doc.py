"""prune-<name>/search.json read once into typed, frozen objects: `SearchDoc` and its `Candidate`s,
`Frontier`, `Screen`, `Target`, `Audit` and `Speed`. `compare`'s tables (engine/contract/search_table.py,
engine/compare/frontier.py, engine/compare/audit.py) and the TUI render these, never the dict.

The document is written by engine.search.table.search_document (the prune stage), then
engine.search.speed_budget (each candidate's timings, "speed") and engine.search.audit ("audit"); the
writers build the dict, this is the one reader. Parsing is defensive: a key a search.json written by an
older version lacks, or one of the wrong type, reads as None (as a `.get` did); a file that is not a
JSON object or has no candidate list is no document (None). A candidate that is not an object stays in
its place (the frontier's and the audit's indices count it), blank: no shape, no numbers. The frontier
is always there: the file's own, or, for a file written before it existed (or a broken one), worked
out from the candidates (engine.contract.frontier). Pure Python, torch-free, no pydantic: the TUI
imports it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.contract.files import DamagedFile, read_json
from engine.contract.frontier import Frontier, frontier, value


def _num(v: Any) -> float | None:
    """A JSON number as a float (non-finite ones kept: a table shows them), else None."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _dict(v: Any) -> dict[str, Any] | None:
    return v if isinstance(v, dict) else None


SHAPE_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_key_value_heads")


@dataclass(frozen=True)
class Shape:
    """A candidate's shape as search.json keeps it (engine.shapes.candidates.Candidate.shape_json)."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int

    @classmethod
    def of(cls, d: Any) -> Shape | None:
        """None unless every key is there, an integer."""
        vals = [_int(d.get(k)) for k in SHAPE_KEYS] if isinstance(d, dict) else [None]
        return cls(*vals) if None not in vals else None  # type: ignore[arg-type]

    @property
    def heads(self) -> str:
        return f"{self.num_attention_heads}/{self.num_key_value_heads}"

    @property
    def label(self) -> str:
        """engine.shapes.candidates.candidate_label of this shape."""
        return f"{self.num_layers}L h{self.hidden_size} ffn{self.ffn_hidden_size} {self.heads}"


@dataclass(frozen=True)
class Candidate:
    """One entry of "candidates": its shape and size, its screen, its score and rank (scored ones),
    and, under a speed budget, its timings (timed finalists) and the cost model's prediction."""

    index: int  # its place in the file's candidate list (the frontier's and the audit's indices)
    shape: Shape | None = None  # None: missing or incomplete (a hand-edited or foreign file)
    params: int | None = None
    memory_gb: float | None = None
    screen_loss: float | None = None
    screen_rank: int | None = None
    screen_seconds: float | None = None
    loss: float | None = None
    score: float | None = None
    rank: int | None = None  # None: not scored
    chosen: bool = False
    seconds: float | None = None
    decode_ms: float | None = None
    prefill_tokens_per_s: float | None = None
    predicted_decode_ms: float | None = None
    predicted_prefill_tokens_per_s: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the entry as written ({} when not an object)
    is_object: bool = True  # False: the entry was not a JSON object

    @classmethod
    def of(cls, index: int, c: Any) -> Candidate:
        if not isinstance(c, dict):
            return cls(index, is_object=False)
        return cls(index, Shape.of(c.get("shape")), _int(c.get("params")), _num(c.get("memory_gb")),
                   _num(c.get("screen_loss")), _int(c.get("screen_rank")), _num(c.get("screen_seconds")),
                   _num(c.get("loss")), _num(c.get("score")), _int(c.get("rank")), c.get("chosen") is True,
                   _num(c.get("seconds")), _num(c.get("decode_ms")), _num(c.get("prefill_tokens_per_s")),
                   _num(c.get("predicted_decode_ms")), _num(c.get("predicted_prefill_tokens_per_s")), c)

    @property
    def scored(self) -> bool:
        return self.rank is not None

    def value(self, key: str) -> float | None:
        """Its finite number under `key` (or under its "speed" table): a frontier axis, or its quality."""
        return value(self.raw, key)

    def need_shape(self) -> Shape:
        """Its shape, for a table that shows it; ValueError when it has none (the caller says the file
        is unreadable, as it did of a missing key)."""
        if self.shape is None:
            s = self.raw.get("shape")
            lacks = next((k for k in SHAPE_KEYS if _int(s.get(k)) is None), "") if isinstance(s, dict) else ""
            raise DamagedFile(f"search.json: candidate {self.index}: " + (f"its shape has no {lacks}" if lacks else "no shape"))
        return self.shape


@dataclass(frozen=True)
class Target:
    """The search's budget (engine.shapes.budget.Budget.to_json): "params" or "memory_gb"."""

    metric: str | None = None
    target: float | int | None = None  # as written: a table prints it as is
    lo: float | None = None
    hi: float | None = None
    fraction: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, d: Any) -> Target | None:
        if not isinstance(d, dict) or not d:
            return None
        t = d.get("target")
        return cls(_str(d.get("metric")), t if _num(t) is not None else None, _num(d.get("lo")), _num(d.get("hi")),
                   _num(d.get("fraction")), d)


@dataclass(frozen=True)
class Screen:
    """How the candidates were screened: how many of how many, on how many batches, at what cost."""

    screened: int | None = None
    batches: int | None = None
    candidates: int | None = None
    capped: bool = False  # screen_max left some out
    top_k: int | None = None
    seconds: float | None = None
    seconds_per_candidate: float | None = None

    @classmethod
    def of(cls, d: Any) -> Screen | None:
        if not isinstance(d, dict):
            return None
        return cls(_int(d.get("screened")), _int(d.get("batches")), _int(d.get("candidates")), bool(d.get("capped")),
                   _int(d.get("top_k")), _num(d.get("seconds")), _num(d.get("seconds_per_candidate")))


@dataclass(frozen=True)
class AuditCandidate:
    """One audited candidate (engine.search.audit.audit_summary): its score rank and final loss."""

    index: int | None = None
    rank: int | None = None
    screen_loss: float | None = None
    score: float | None = None
    final_loss: float | None = None
    final_rank: int | None = None
    seconds: float | None = None
    final_losses: tuple[float, ...] = ()  # one per seed with audit_seeds > 1 (final_loss is their mean)
    validation_loss: float | None = None  # judged on the test split: the final loss on the split the search scored on

    @classmethod
    def of(cls, d: dict[str, Any]) -> AuditCandidate:
        runs = d.get("final_losses") if isinstance(d.get("final_losses"), list) else []
        return cls(_int(d.get("index")), _int(d.get("rank")), _num(d.get("screen_loss")), _num(d.get("score")),
                   _num(d.get("final_loss")), _int(d.get("final_rank")), _num(d.get("seconds")),
                   tuple(x for x in (_num(v) for v in runs) if x is not None), _num(d.get("validation_loss")))


@dataclass(frozen=True)
class Audit:
    """search.json's "audit" (`audit = N`): the best-scored candidates distilled for real, and how
    the search's ranking held (engine/search/audit.py)."""

    steps: int | None = None
    requested: int | None = None
    done: int | None = None
    cancelled: bool = False
    seconds: float | None = None
    split: str | None = None  # the held-out split it judged on ("test", "validation"); None: older files
    candidates: tuple[AuditCandidate, ...] = ()
    spearman_screen: float | None = None
    spearman_score: float | None = None
    chosen_is_best: bool | None = None  # None: the chosen shape was not audited
    best_index: int | None = None
    gap_nats: float | None = None
    seeds: int = 1  # audit_seeds: each candidate distilled this many times
    spearman_repeat: float | None = None  # one seed's final losses against another's (the audit's own agreement)
    noise_nats: float | None = None  # the largest spread of a candidate's losses over the seeds
    spearman_score_validation: float | None = None  # judged on test: the order against the validation split's losses

    @classmethod
    def of(cls, d: Any) -> Audit | None:
        if not isinstance(d, dict):
            return None
        cands = d.get("candidates") if isinstance(d.get("candidates"), list) else []
        best = d.get("chosen_is_best")
        return cls(_int(d.get("steps")), _int(d.get("requested")), _int(d.get("done")), bool(d.get("cancelled")),
                   _num(d.get("seconds")), _str(d.get("split")),
                   tuple(AuditCandidate.of(a) for a in cands if isinstance(a, dict)),
                   _num(d.get("spearman_screen")), _num(d.get("spearman_score")),
                   None if best is None else bool(best), _int(d.get("best_index")), _num(d.get("gap_nats")),
                   _int(d.get("seeds")) or 1, _num(d.get("spearman_repeat")), _num(d.get("noise_nats")),
                   _num(d.get("spearman_score_validation")))


@dataclass(frozen=True)
class Speed:
    """search.json's "speed" under a speed budget (engine.search.speed_budget.SpeedSearch.annotate):
    where the finalists were timed and the cost model that chose them."""

    target: dict[str, Any] | None = None
    device: str | None = None
    dtype: str | None = None
    cache: str | None = None
    candidates_in_band: int | None = None
    kept: int | None = None
    slack: float | None = None
    from_cache: int | None = None
    seconds: float | None = None
    error: dict[str, Any] | None = None
    cost_model: dict[str, Any] | None = None
    timed: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, d: Any) -> Speed | None:
        if not isinstance(d, dict):
            return None
        timed = d.get("timed") if isinstance(d.get("timed"), list) else []
        return cls(_dict(d.get("target")), _str(d.get("device")), _str(d.get("dtype")), _str(d.get("cache")),
                   _int(d.get("candidates_in_band")), _int(d.get("kept")), _num(d.get("slack")),
                   _int(d.get("from_cache")), _num(d.get("seconds")), _dict(d.get("error")),
                   _dict(d.get("cost_model")), tuple(t for t in timed if isinstance(t, dict)))


@dataclass(frozen=True)
class SearchDoc:
    """A search student's search.json."""

    candidates: tuple[Candidate, ...]
    frontier: Frontier  # the file's, or worked out from the candidates
    # what the candidates were scored by ("loss", "distill", "distill+loss", a task); None: older files
    score: str | None = None
    higher_is_better: bool = False
    target: Target | None = None
    screen: Screen | None = None
    selection: str | None = None
    axes: tuple[str, ...] = ()
    calibration: dict[str, Any] | None = None
    audit: Audit | None = None
    speed: Speed | None = None
    score_seeds: int = 1  # a distill score: the mean of this many data orders (score_seeds; absent: 1)

    @property
    def score_name(self) -> str:
        return self.score or "loss"

    @property
    def quality_name(self) -> str:
        """What a candidate's "score" figure is (the frontier's quality): a "distill+loss" search ranks by
        two ranks, but its score figure is the short distillation's loss."""
        return "distill" if self.score_name == "distill+loss" else self.score_name

    @property
    def scored(self) -> list[Candidate]:
        """The scored candidates, best first."""
        return sorted((c for c in self.candidates if c.rank is not None), key=lambda c: c.rank or 0)

    @property
    def chosen(self) -> Candidate | None:
        return next((c for c in self.candidates if c.chosen), None)

    def candidate(self, i: int | None) -> Candidate | None:
        """Candidate i of the file's list; None when i is no index of it."""
        return self.candidates[i] if isinstance(i, int) and 0 <= i < len(self.candidates) else None


def _frontier(d: Any, cands: list[Any], higher_is_better: bool) -> Frontier:
    """The file's frontier when it is one (its points index object candidates); else worked out."""
    if (isinstance(d, dict) and isinstance(d.get("points"), list) and isinstance(d.get("axes"), list)
            and all(isinstance(i, int) and 0 <= i < len(cands) and isinstance(cands[i], dict) for i in d["points"])):
        return Frontier.of(d, len(cands))
    return Frontier.of(frontier(cands, higher_is_better), len(cands))


def search_doc(doc: Any) -> SearchDoc | None:
    """The typed document of a parsed search.json; None when it is not one (not an object, or no
    candidate list)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("candidates"), list):
        return None
    cands = doc["candidates"]
    hib = doc.get("higher_is_better") is True
    axes = doc.get("axes") if isinstance(doc.get("axes"), list) else []
    return SearchDoc(tuple(Candidate.of(i, c) for i, c in enumerate(cands)), _frontier(doc.get("frontier"), cands, hib),
                     _str(doc.get("score")), hib, Target.of(doc.get("target")), Screen.of(doc.get("screen")),
                     _str(doc.get("selection")), tuple(str(a) for a in axes), _dict(doc.get("calibration")),
                     Audit.of(doc.get("audit")), Speed.of(doc.get("speed")), max(1, _int(doc.get("score_seeds")) or 1))


def read_search_doc(path: str | Path) -> SearchDoc | None:
    """search.json at `path`; None when it is missing, damaged (not JSON) or not a search document.
    A file that is there but cannot be read raises UnreadableFile (read_json)."""
    return search_doc(read_json(path))


__all__ = ["Audit", "AuditCandidate", "Candidate", "Frontier", "Screen", "SearchDoc", "Shape", "Speed", "Target",
           "read_search_doc", "search_doc"]
