"""results.json's metrics read by one set of rules: one number per task, their mean, and the speedup
of each model over the teacher (no torch: `compare` and the TUI read it through the contract).

lm-eval reports several metrics per task; the one that says "how good" is, in this order of
preference, acc_norm, acc, exact_match, f1, mcc, bleu, or else the first metric that is not a
stderr and not a perplexity, or else (a task with only lower-is-better metrics, e.g. wikitext)
its first perplexity-like metric. `compare`, report.md and the TUI average only higher-is-better
headlines (a perplexity does not average with accuracies); a search's score_task ranks by the
headline in its own direction. Everything reads task scores through this module: the one rule.
"""

from __future__ import annotations

from typing import Any

PREFERRED = ("acc_norm", "acc", "exact_match", "f1", "mcc", "bleu")
CHANCE = "chance"  # not a metric: a multiple-choice task's blind-guess accuracy (engine.evaluation.tasks)
_ACCURACIES = ("acc", "acc_norm", "acc_mutual_info")  # the metrics a blind guess scores `chance` on
_LOWER_IS_BETTER = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of this metric (as named in results.json) is better."""
    return not metric.startswith(_LOWER_IS_BETTER)


def headline_metric(metrics: Any) -> tuple[str, float, bool] | None:
    """(metric name, value, higher is better) of the headline metric of one task's metrics, or None."""
    if not isinstance(metrics, dict):
        return None
    for name in PREFERRED:
        if _num(metrics.get(name)) is not None:
            return name, float(metrics[name]), True
    values = [(n, float(v)) for n, v in metrics.items()
              if not n.endswith("_stderr") and "_stderr_" not in n and n != CHANCE and _num(v) is not None]
    for name, v in sorted(values, key=lambda nv: not higher_is_better(nv[0])):  # stable: first of each kind
        return name, v, higher_is_better(name)
    return None


def task_score(metrics: Any) -> tuple[str, float] | None:
    """(metric name, value) of the headline metric of one task's metrics when higher is better
    (what averages across tasks), else None."""
    got = headline_metric(metrics)
    return (got[0], got[1]) if got is not None and got[2] else None


def task_scores(entry: Any, tasks: list[str] | None = None) -> dict[str, float]:
    """{task: headline score} of one model entry of results.json, for `tasks` (default: all its tasks)."""
    got = entry.get("tasks") if isinstance(entry, dict) else None
    if not isinstance(got, dict):
        return {}
    out = {}
    for t in tasks if tasks is not None else list(got):
        s = task_score(got.get(t))
        if s is not None:
            out[t] = s[1]
    return out


def at_chance(metrics: Any) -> bool:
    """Whether a task's headline score is within its stderr of the task's chance level: it decides
    nothing. False when the chance level or the stderr is unknown (not a multiple-choice accuracy)."""
    got = headline_metric(metrics)
    if got is None or got[0] not in _ACCURACIES:  # e.g. mcc or f1 of a multiple-choice task: not 1/choices
        return False
    chance, stderr = _num(metrics.get(CHANCE)), _num(metrics.get(f"{got[0]}_stderr"))
    return chance is not None and stderr is not None and abs(got[1] - chance) <= stderr


def mean_score(scores: dict[str, float]) -> float | None:
    return sum(scores.values()) / len(scores) if scores else None


def headline_batch(speed: Any) -> str | None:
    """The batch size whose decode speed is the model's headline speed: the smallest measured
    (batch 1 by default: one user's latency-bound decoding)."""
    tps = speed.get("decode_tokens_per_s") if isinstance(speed, dict) else None
    if not isinstance(tps, dict) or not tps:
        return None
    return min(tps, key=lambda b: int(b) if str(b).isdigit() else 1 << 30)


def decode_speed(entry: Any) -> float | None:
    """Decode tokens/s of one model entry at the headline batch size."""
    speed = entry.get("speed") if isinstance(entry, dict) else None
    b = headline_batch(speed)
    return _num(speed["decode_tokens_per_s"].get(b)) if b is not None else None


def decode_range(entry: Any) -> tuple[float, float] | None:
    """(low, high) decode tokens/s at the headline batch size: the middle half of the repeats
    (engine.evaluation.speed); None when not measured so (an older results.json)."""
    speed = entry.get("speed") if isinstance(entry, dict) else None
    b = headline_batch(speed)
    ranges = speed.get("decode_tokens_per_s_range") if b is not None else None
    r = ranges.get(b) if isinstance(ranges, dict) else None
    if isinstance(r, list) and len(r) == 2 and all(_num(x) is not None for x in r):
        return float(r[0]), float(r[1])
    return None


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two (low, high) intervals share a value."""
    return a[0] <= b[1] and b[0] <= a[1]


def clearly_best(values: list[float | None], ranges: list[tuple[float, float] | None],
                 higher: bool = True) -> int | None:
    """Index of the best of `values` when its interval overlaps no other's; None when two are within
    each other's spread (neither may be called faster) or fewer than two values are known. A value
    without an interval (an older results.json) stands for itself."""
    known = [i for i, v in enumerate(values) if v is not None]
    if len(known) < 2:
        return None
    span = {i: ranges[i] or (float(values[i]), float(values[i])) for i in known}  # type: ignore[arg-type]
    best = (max if higher else min)(known, key=lambda i: values[i])  # type: ignore[arg-type, return-value]
    return None if any(overlap(span[best], span[i]) for i in known if i != best) else best


def speedup_text(up: float | None, rng: Any) -> str:
    """"1.60x"; "≈1.04x" when the speedup's interval holds 1 (not faster, not slower); "-" unknown."""
    if up is None:
        return "-"
    same = isinstance(rng, (list, tuple)) and len(rng) == 2 and rng[0] <= 1.0 <= rng[1]
    return f"{'≈' if same else ''}{up:.2f}x"


def add_speedups(models: dict[str, Any], teacher: str = "teacher") -> None:
    """Set speed.speedup_vs_teacher of every model (decode tokens/s at the headline batch size over
    the teacher's) in place, and speedup_range (its interval from both models' middle halves);
    None when the teacher was not measured."""
    base, base_rng = decode_speed(models.get(teacher)), decode_range(models.get(teacher))
    for entry in models.values():
        speed = entry.get("speed") if isinstance(entry, dict) else None
        if isinstance(speed, dict):
            mine, rng = decode_speed(entry), decode_range(entry)
            speed["speedup_vs_teacher"] = mine / base if mine is not None and base else None
            speed["speedup_range"] = ([rng[0] / base_rng[1], rng[1] / base_rng[0]]  # the teacher: 1 by definition
                                      if rng is not None and base_rng is not None and base_rng[0] > 0
                                      and entry is not models.get(teacher) else None)
