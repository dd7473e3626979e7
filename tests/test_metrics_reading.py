"""Reading metrics.jsonl (issue 15): big files in bounded memory, bad lines that hide nothing, one reader
(engine.contract.metrics_reader) behind the summary of the Runs table / status / compare, the Run
detail's curves and the orchestrator's divergence check."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

from app.data.series import MAX_POINTS, Series, StageCurves
from engine.contract import (
    MetricsCursor,
    MetricsSummary,
    append_metrics,
    last_record_before,
    now_iso,
    parse_record,
    read_metrics_summary,
    write_atomic,
)
from engine.contract.divergence import stage_divergence
from engine.contract.metrics_summary import TAIL_BYTES

# ---- a long run: 200k lines -------------------------------------------------------------------------

LINES = 200_000
LAST_VAL_STEP = 150_000  # the latest validation is ~50k train lines (~11 MB) before the end of the file
MEMORY_BOUND = 16 * 2**20
# Why 16 MiB: reading a chunk at a time holds one 1 MiB chunk, its split lines (~1.3 MiB) and the kept
# points (2 x 4000 x 4 small lists, ~1 MiB); holding the ~46 MB file, or its 200k records (~1 KB
# each as dicts), would be many times more. The file is checked to be well above the bound.


def _train_loss(step: int) -> float:
    return 10.0 - step * 2e-5  # a straight line: merged points must stay on it


def _write_long_run(path: Path) -> dict:
    """The lines the engine writes for a 200k-step stage (append_metrics's format, written in one go);
    returns the last validation record."""
    t = now_iso()
    last_val: dict = {}
    with open(path, "w", encoding="utf-8") as f:
        for step in range(1, LINES + 1):
            f.write(json.dumps({"time": t, "step": step, "tokens": step * 2048, "split": "train",
                                "loss": _train_loss(step), "lr": 9.1e-05, "grad_norm": 0.81234,
                                "tokens_per_s": 51234.5, "mfu": 0.41234, "gpu_mem_gb": 61.2,
                                "nan_steps": 0}) + "\n")
            if step % 10_000 == 0 and step <= LAST_VAL_STEP:
                last_val = {"time": t, "step": step, "tokens": step * 2048, "split": "val",
                            "loss": 8.724 + step * 1e-9}
                f.write(json.dumps(last_val) + "\n")
    return last_val


def _peak_while(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_curves_of_a_200k_line_file_show_the_latest_val_in_bounded_memory(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    last_val = _write_long_run(path)
    assert path.stat().st_size > 2 * MEMORY_BOUND
    curves = StageCurves(path)
    peak = _peak_while(lambda: curves.update())
    assert peak < MEMORY_BOUND, f"peak {peak / 2**20:.1f} MiB while reading"
    assert (curves.val.steps[-1], curves.val.loss[-1]) == (last_val["step"], last_val["loss"])
    train = curves.train
    assert len(train) <= MAX_POINTS and len(curves.val) <= MAX_POINTS
    assert (train.steps[0], train.loss[0]) == (1, _train_loss(1))  # the first and the latest as logged
    assert (train.steps[-1], train.loss[-1]) == (LINES, _train_loss(LINES))
    assert sum(train.weights) == LINES
    assert all(abs(loss - _train_loss(step)) < 1e-4 for step, loss in zip(train.steps, train.loss, strict=True))
    assert train.steps == sorted(train.steps) and train.tokens[-1] == LINES * 2048


def test_the_table_summary_finds_the_latest_val_far_behind_the_tail(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    last_val = _write_long_run(path)
    tail = MetricsSummary()  # the Runs table's: first sight reads the tail only, then searches back
    peak = _peak_while(lambda: tail.update(path))
    assert peak < MEMORY_BOUND
    assert tail.last_val == last_val and tail.last_train["step"] == LINES
    assert read_metrics_summary(path).last_val == last_val  # status / compare: the whole file


def test_curves_read_only_what_was_appended_and_start_over_on_a_new_file(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3):
        append_metrics(path, {"step": step, "tokens": 10 * step, "split": "train", "loss": 3.0 - step / 10})
    curves = StageCurves(path)
    assert curves.update() and curves.train.steps == [1, 2, 3]
    with open(path, "r+b") as f:  # the first line rewritten in place: a cursor reading from 0 would lose it
        first = f.readline()
        f.seek(0)
        f.write(b" " * (len(first) - 1))
    append_metrics(path, {"step": 3, "tokens": 30, "split": "val", "loss": 2.9})
    assert curves.update() and curves.train.steps == [1, 2, 3] and curves.val.loss == [2.9]
    assert curves.update() is False
    write_atomic(path, json.dumps({"step": 1, "split": "train", "loss": 5.0}) + "\n")  # resume rewrote it
    assert curves.update() and curves.train.loss == [5.0] and len(curves.val) == 0
    with open(path, "r+b") as f:  # shrunk in place: start over too
        f.truncate(0)
    assert curves.update() and len(curves.train) == 0


def test_a_series_merges_neighbours_past_its_bound_and_keeps_the_ends():
    s = Series(max_points=10)
    for step in range(1, 1001):
        s.add({"step": step, "tokens": 4 * step, "loss": 2.0 * step})
        assert len(s) <= 10 and s.steps[-1] == step and s.loss[-1] == 2.0 * step
    assert (s.steps[0], s.loss[0]) == (1, 2.0) and sum(s.weights) == 1000
    # a merged point is its records' mean: on the line, but for its step rounded to an integer
    assert all(abs(loss - 2.0 * step) <= 1.0 and abs(tok - 4 * step) <= 2
               for step, tok, loss in zip(s.steps, s.tokens, s.loss, strict=True))
    copy = s.snapshot()
    s.add({"step": 1001, "loss": 1.0})
    assert copy.steps[-1] == 1000 and s.steps[-1] == 1001


# ---- bad lines ----------------------------------------------------------------------------------------

JUNK = [
    b"garbage from a crash\n",
    b'{"step": 2, "split": "val", "loss": "oops"}\n',  # wrong types
    b'{"step": "2", "split": "train", "loss": 1.0}\n',
    b'{"step": 2, "split": "train", "loss": true}\n',
    b'{"step": 2, "split": 7, "loss": 1.0}\n',
    b'{"step": 2, "split": "train", "loss": 1.0, "tokens": "many"}\n',
    b"[1, 2, 3]\n",
    b"\xff\xfe\n",
    b'{"step": 2, "split": "tr{"step": 2, "split": "train"}\n',  # two writers' lines run together
    b"\n",
]


def _good(step: int, split: str, loss: float) -> bytes:
    return (json.dumps({"time": now_iso(), "step": step, "tokens": 64 * step, "split": split, "loss": loss})
            + "\n").encode()


def _readers(path: Path) -> tuple[MetricsSummary, MetricsSummary, StageCurves]:
    """The Runs table's summary (tail first), status/compare's (whole history) and the Run detail's curves."""
    return MetricsSummary(), MetricsSummary(history=True), StageCurves(path)


def _update(readers: tuple[MetricsSummary, MetricsSummary, StageCurves], path: Path) -> None:
    readers[0].update(path)
    readers[1].update(path)
    readers[2].update()


def test_a_junk_line_hides_no_good_value_before_or_after_it(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_good(1, "train", 2.0) + _good(1, "val", 2.5))
    followers = _readers(path)  # following the file as it grows
    _update(followers, path)
    with open(path, "ab") as f:  # junk last: what came before still shows
        f.write(b"".join(JUNK))
    for readers in (followers, _readers(path)):  # and readers that first see it now
        _update(readers, path)
        for summary in readers[:2]:
            assert summary.last_train["loss"] == 2.0 and summary.last_val["loss"] == 2.5
            assert summary.tokens == 64
        assert readers[2].train.loss == [2.0] and readers[2].val.loss == [2.5]
    with open(path, "ab") as f:  # good lines after the junk count too
        f.write(_good(2, "train", 1.8) + b"".join(JUNK) + _good(2, "val", 2.2) + b"".join(JUNK))
    for readers in (followers, _readers(path)):
        _update(readers, path)
        tail, whole, curves = readers
        for summary in (tail, whole):
            assert summary.last_train["loss"] == 1.8 and summary.last_val["loss"] == 2.2
        assert [r["loss"] for r in whole.vals] == [2.5, 2.2]
        assert curves.train.loss == [2.0, 1.8] and curves.val.loss == [2.5, 2.2]
        assert curves.train.tokens == [64, 128]


def test_a_junk_val_line_after_a_long_tail_does_not_hide_the_val_before_it(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    filler = b"".join(_good(s, "train", 2.0) for s in range(2, 2 + TAIL_BYTES // 50))
    path.write_bytes(_good(1, "val", 2.5) + filler + b'{"step": 9, "split": "val", "loss": "oops"}\n' + filler)
    tail = MetricsSummary()
    tail.update(path)
    assert tail.last_val["loss"] == 2.5


def test_a_non_finite_loss_reads_as_the_engine_writes_it(tmp_path: Path):
    """append_metrics writes a NaN loss as null ("not finite"); a literal NaN/Infinity means the same.
    It is the latest value (no fall-back to an older, finite one), and the divergence check flags it."""
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, {"step": 1, "split": "val", "loss": 3.0})
    append_metrics(path, {"step": 2, "split": "val", "loss": float("nan")})
    assert json.loads(path.read_text().splitlines()[-1])["loss"] is None
    assert read_metrics_summary(path).last_val["loss"] is None
    assert "not a number" in stage_divergence(path)
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        rec = parse_record(b'{"step": 3, "split": "val", "loss": ' + literal + b"}")
        assert rec is not None and rec["loss"] is None
    with open(path, "ab") as f:
        f.write(b'{"step": 3, "split": "train", "loss": NaN}\n')
    for summary in (MetricsSummary(), read_metrics_summary(path)):
        summary.update(path)
        assert summary.last_train["step"] == 3 and summary.last_train["loss"] is None


def test_a_partial_last_line_is_read_only_once_complete(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    line = _good(2, "val", 2.2)
    path.write_bytes(_good(1, "train", 2.0) + _good(1, "val", 2.5) + line[:20])  # being written right now
    followers = _readers(path)
    _update(followers, path)
    for readers in (followers, _readers(path)):
        _update(readers, path)
        assert readers[0].last_val["loss"] == readers[1].last_val["loss"] == 2.5
        assert readers[2].val.loss == [2.5]
    with open(path, "ab") as f:
        f.write(line[20:])
    _update(followers, path)
    assert followers[0].last_val["loss"] == followers[1].last_val["loss"] == 2.2
    assert followers[2].val.loss == [2.5, 2.2]


def test_divergence_reads_through_the_reader_and_skips_junk(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_good(10, "val", 3.0) + _good(20, "val", 2.5) + b"junk\n"
                     + b'{"step": 30, "split": "val", "loss": "boom"}\n' + b'{"step": 30, "split": "va')
    assert stage_divergence(path) is None  # a junk line is not "a loss that is not a number"
    with open(path, "ab") as f:
        f.write(b'l", "loss": 45.4}\n')
    assert stage_divergence(path).startswith("validation loss 45.4 at step 30 is well above its best 2.5")
    assert stage_divergence(tmp_path / "missing.jsonl") is None


# ---- the reader itself ----------------------------------------------------------------------------------


def test_the_cursor_reads_lines_longer_than_its_chunks(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    lines = [_good(s, "val" if s % 3 == 0 else "train", 1.0 + s) for s in range(1, 40)]
    path.write_bytes(b"".join(lines[:20]) + b"junk\n" + b"".join(lines[20:]))
    for chunk in (1, 7, 64, 10_000):
        cursor = MetricsCursor(path, chunk_bytes=chunk)
        cursor.check()
        assert [r["step"] for r in cursor.records()] == list(range(1, 40))
        assert cursor.offset == os.path.getsize(path)
        vals = [s for s in range(1, 40) if s % 3 == 0]
        assert last_record_before(path, os.path.getsize(path), "val", chunk_bytes=chunk)["step"] == vals[-1]
        end = len(b"".join(lines[:20]))  # a line start: the last val before it
        assert last_record_before(path, end, "val", chunk_bytes=chunk)["step"] == 18
        assert last_record_before(path, len(lines[0]), "val", chunk_bytes=chunk) is None
