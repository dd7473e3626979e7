"""Speed figures that can be compared: round-robin order, the stopping rule, the spread and the load
mark, and no model called faster when the intervals overlap. No test here reads a clock: the timer,
the clock and the load probe are fakes, so every outcome is exact."""

from __future__ import annotations

import pytest
from _prune_util import tiny_model
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)

from engine.compare.tables import decide_cells, decide_title
from engine.contract import ModelRow, scores
from engine.evaluation.speed import measure_speeds, round_robin, spread, stop_reason

SETTINGS = {"batch_sizes": [1], "prompt_tokens": 4, "new_tokens": 4, "repeats": 3, "max_spread": 0.05,
            "max_seconds": 10.0}


def test_round_robin_rotates_the_first_model_of_each_round():
    order: list[str] = []
    rounds, reason = round_robin(["a", "b", "c"], order.append, lambda r, _t: "done" if r == 4 else None,
                                 clock=lambda: 0.0)
    assert (rounds, reason) == (4, "done")
    assert "".join(order) == "abc" "bca" "cab" "abc"


def test_stop_rule_minimum_repeats_then_spread_else_time_cap():
    tight, wide = [1.0, 1.01, 0.99, 1.0], [1.0, 1.5, 0.7, 1.2]
    assert spread([1.0, 1.0, 1.0]) == 0.0 and spread([1.0]) == float("inf")
    assert stop_reason([tight[:2]], 2, 99.0, SETTINGS) is None  # fewer than `repeats`, even past the cap
    assert stop_reason([tight, tight], 4, 0.0, SETTINGS) == "spread"
    assert stop_reason([tight, wide], 4, 9.9, SETTINGS) is None  # one wide series keeps every model going
    assert stop_reason([tight, wide], 4, 10.0, SETTINGS) == "time cap"


class FakeTimer:
    """Each model's phases take scripted seconds; which model ran and which phase is read from forward
    hooks (prefill: one forward, decode: new_tokens - 1). A fake clock advances by what was 'spent'."""

    def __init__(self, models, script):
        self.script, self.now, self.log, self.turns = script, 0.0, [], []
        for name, m in models.items():
            m.register_forward_hook(lambda *_a, n=name: self.log.append(n))
        self.count = {}

    def __call__(self, fn):
        self.log.clear()
        out = fn()
        name, phase = self.log[-1], "prefill" if len(self.log) == 1 else "decode"
        if phase == "prefill":
            self.turns.append(name)
        k = self.count[(name, phase)] = self.count.get((name, phase), -1) + 1
        times = self.script[name][phase]
        self.now += times[k % len(times)]
        return times[k % len(times)], out

    def clock(self):
        return self.now


def _timed(script, load=lambda: 0.5, **over):
    models = {"a": tiny_model("llama", layers=1), "b": tiny_model("llama", layers=2)}
    timer = FakeTimer(models, script)
    return measure_speeds(models, {**SETTINGS, **over}, timer=timer, clock=timer.clock, load=load, cpus=2), timer


def test_steady_models_stop_at_the_minimum_repeats_interleaved():
    steady = {"a": {"prefill": [0.1], "decode": [0.3]}, "b": {"prefill": [0.2], "decode": [0.6]}}
    speeds, timer = _timed(steady)
    # one warm-up of each (whose time is not kept), then rounds a b, b a, a b
    assert "".join(timer.turns) == "ab" + "ab" "ba" "ab"
    a, b = speeds["a"], speeds["b"]
    assert a["repeats"] == b["repeats"] == 3 and a["stopped"] == "spread" and a["interleaved"] == ["a", "b"]
    assert a["decode_tokens_per_s"]["1"] == pytest.approx(3 / 0.3) and b["decode_tokens_per_s"]["1"] == pytest.approx(5)
    assert a["decode_tokens_per_s_range"]["1"] == pytest.approx([10, 10]) and a["spread"]["decode"]["1"] == 0
    assert a["prefill_tokens_per_s"] == pytest.approx(4 / 0.1) and a["prefill_tokens_per_s_range"] == pytest.approx([40, 40])
    assert a["under_load"] is False and a["load"] == {"max_1min": 0.5, "cpus": 2}


def test_a_noisy_model_keeps_both_timed_until_the_time_cap():
    noisy = {"a": {"prefill": [0.1], "decode": [0.3]}, "b": {"prefill": [0.2], "decode": [0.5, 1.0]}}
    speeds, timer = _timed(noisy, max_seconds=6.0)
    b = speeds["b"]
    assert b["stopped"] == "time cap" and b["spread"]["decode"]["1"] > 0.05
    # after the warm-ups (b's took the first 0.5), rounds cost 0.6 + 1.0, 0.6 + 0.5, ...: 1.6, 2.7, 4.3, 5.4,
    # 7.0 fake seconds; the cap is checked after each round, so the fifth is the last
    assert b["repeats"] == speeds["a"]["repeats"] == 5 and timer.turns.count("a") == timer.turns.count("b") == 6
    lo, hi = b["decode_tokens_per_s_range"]["1"]
    assert lo <= b["decode_tokens_per_s"]["1"] <= hi and lo < hi


def test_a_figure_taken_while_the_cpu_was_oversubscribed_is_marked():
    steady = {"a": {"prefill": [0.1], "decode": [0.3]}, "b": {"prefill": [0.2], "decode": [0.6]}}
    loads = iter([1.0, 1.5, 3.5, 1.0])
    speeds, _ = _timed(steady, load=lambda: next(loads))
    assert speeds["a"]["under_load"] is True and speeds["a"]["load"]["max_1min"] == 3.5


def _entry(tps: float, lo: float, hi: float) -> dict:
    return {"speed": {"decode_tokens_per_s": {"1": tps, "4": 4 * tps}, "decode_tokens_per_s_range": {"1": [lo, hi]}}}


def test_overlapping_intervals_name_no_faster_model():
    assert scores.clearly_best([100.0, 90.0], [(95.0, 105.0), (85.0, 96.0)]) is None
    assert scores.clearly_best([100.0, 90.0], [(98.0, 102.0), (88.0, 92.0)]) == 0
    assert scores.clearly_best([100.0, 90.0], [None, None]) == 0  # an older results.json: the values alone
    assert scores.clearly_best([1.0, 2.0], [(0.9, 1.1), (1.9, 2.1)], higher=False) == 0
    models = {"teacher": _entry(100.0, 90.0, 110.0), "close": _entry(104.0, 95.0, 112.0),
              "fast": _entry(200.0, 190.0, 210.0)}
    scores.add_speedups(models)
    close, fast = models["close"]["speed"], models["fast"]["speed"]
    assert close["speedup_range"] == pytest.approx([95 / 110, 112 / 90])
    assert scores.speedup_text(close["speedup_vs_teacher"], close["speedup_range"]) == "≈1.04x"
    assert scores.speedup_text(fast["speedup_vs_teacher"], fast["speedup_range"]) == "2.00x"


def test_compare_shows_the_spread_the_load_mark_and_no_speedup_within_it():
    rows = [ModelRow(run="r", label="teacher", stage="eval", method="teacher", decode_tokens_per_s={"1": 100.0},
                     speedup=1.0, speedup_range=[0.8, 1.25], decode_spread={"1": 0.1}),
            ModelRow(run="r", label="depth", stage="distill-depth", method="depth", decode_tokens_per_s={"1": 106.0},
                     speedup=1.06, speedup_range=[0.9, 1.2], decode_spread={"1": 0.09}, under_load=True)]
    cells = decide_cells(rows[1], rows)
    assert cells[-2:] == ["106 ±9%*", "≈1.06x"]
    assert "≈" in decide_title(rows) and "under load" in decide_title(rows)


def test_the_tui_stars_no_speed_within_the_spread():
    pytest.importorskip("textual")
    from app.widgets.compare.which_student import table_rows

    def row(label: str, tps: float, rng: tuple[float, float]) -> ModelRow:
        return ModelRow(run="r", label=label, stage=f"distill-{label}", method="width",
                        decode_tokens_per_s={"1": tps}, decode_range=rng, speedup=tps / 100,
                        speedup_range=[rng[0] / 110, rng[1] / 90])

    def decode_cells(rows: list[ModelRow]) -> list[str]:
        return [cells[5].plain for cells in table_rows(rows, {("r", "a"): "blue", ("r", "b"): "red"})]

    assert decode_cells([row("a", 106.0, (95.0, 115.0)), row("b", 61.0, (55.0, 100.0))]) == ["106", "61"]
    assert decode_cells([row("a", 106.0, (101.0, 110.0)), row("b", 61.0, (55.0, 70.0))]) == ["106★", "61"]
