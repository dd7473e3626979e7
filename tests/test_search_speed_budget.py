"""Budgets on measured speed (issue 23, section 2): the cost model against timings of shapes it was not
fitted to (real timings on this CPU, a generous tolerance: the box is shared and loaded), and the
selection rules on timings injected through the cache or a scripted measurement (no clock: exact)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)
from test_reliability_inputs import SCRATCH, _lines, _refused, _write

from engine.cli import main
from engine.config.schema import PruneConfig
from engine.config.shape import Shape, shape_from_config
from engine.search.speed_budget import SpeedBudget, SpeedCache, SpeedSearch, timing_key
from engine.shapes.candidates import evenly_spaced, search_space

TEACHER = dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=192, num_hidden_layers=6,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
WHERE = {"device": "test device", "dtype": "float32", "attn": "sdpa", "batch": 1, "prompt": 16, "new": 4}
# the real fit: a teacher wide enough that compute, not the host's overhead or a preemption, sets the times;
# a few rounds each (the test's time, not the figures' precision)
REAL_TEACHER = {**TEACHER, "hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 4}
REAL = dict(batch_size=1, prompt_tokens=64, new_tokens=4, repeats=5, max_spread=0.05, max_seconds=0.2)


def _space(**keys):
    p = PruneConfig(name="s", method="search", **{"target_params": 0.6, "tolerance": 0.1, "hidden_multiple": 8,
                                                  "ffn_multiple": 16, **keys})
    return search_space(shape_from_config(TEACHER), p, "t.toml: prune[s]", "float32", 32)


def _budget(decode_ms=None, prefill=None, fit_shapes=6) -> SpeedBudget:
    return SpeedBudget(decode_ms, prefill, 1, 16, 4, fit_shapes)


def scripted(s: Shape) -> dict:
    """'Measured' figures of a shape (the test's data): 1 ms a layer plus its width, prefill the inverse."""
    ms = 1.0 * s.num_layers + s.hidden_size * s.intermediate_size / 4096
    return {"decode_ms": ms, "prefill_tokens_per_s": 16_000 / ms, "under_load": False}


class Scripted:
    """A measurement that reads the script, counting the shapes it was asked to time."""

    def __init__(self, script=scripted):
        self.script, self.timed = script, []

    def __call__(self, shapes):
        self.timed += shapes
        return [self.script(s) for s in shapes]


def _search(tmp_path, budget, measure) -> SpeedSearch:
    return SpeedSearch(budget, "cpu", WHERE, measure, SpeedCache(tmp_path / "speed.json"), [].append,
                       key="t.toml: prune[s]")


def _fill_cache(path: Path, shapes, script=scripted) -> None:
    SpeedCache(path).save({timing_key(WHERE, s): script(s) for s in shapes})


# ---- the cost model on real timings ------------------------------------------------------------


def test_cost_model_predicts_shapes_it_was_not_fitted_to_on_this_cpu(tmp_path):
    """8 shapes timed with random weights in one round robin (6 fit the model, 2 held out): the model's
    median error on the held-out ones stays within 40% on a loaded 2-core box (there, 5-23%; the
    issue's goal, 5%, is for a GPU; each search logs its figure and writes it into search.json)."""
    import torch

    from engine.search.speed_timing import shape_timer, timing_where

    p = PruneConfig(name="s", method="search", target_params=0.6, tolerance=0.1, hidden_multiple=24, ffn_multiple=64)
    space = search_space(shape_from_config(REAL_TEACHER), p, "t.toml: prune[s]", "float32", 32)
    budget = SpeedBudget(1e6, None, fit_shapes=8, **REAL)
    settings = budget.settings("cpu")
    device = torch.device("cpu")
    log: list[str] = []
    ss = SpeedSearch(budget, "cpu", timing_where(device, "float32", "sdpa", settings),
                     shape_timer(REAL_TEACHER, "float32", device, settings, log=log.append),
                     SpeedCache(tmp_path / "speed.json"), log.append)
    kept = ss.narrow(space)
    assert len(kept.candidates) == len(space.candidates) > 8  # a budget nothing misses
    errors = ss.errors()
    assert errors["decode"]["shapes"] == errors["prefill"]["shapes"] == 2
    assert errors["decode"]["median"] <= 0.4 and errors["prefill"]["median"] <= 0.4, (errors, log)
    # every timing was cached under its key, and the log states the error
    cached = json.loads((tmp_path / "speed.json").read_text())["timings"]
    assert len(cached) == 8 and all(e["decode_ms"] > 0 for e in cached.values())
    assert any("cost model error on shapes it was not fitted to: decode median" in line for line in log), log


def test_the_fit_recovers_costs_it_is_given():
    """Times made of the model's own terms (known coefficients) come back exactly, negative terms never."""
    from engine.search import cost_model

    space = _space()
    shapes = [c.shape for c in space.candidates[:12]]
    truth = (2e-4, 3e-5, 4e-10, 2e-10, 0.0)
    times = [sum(c * f for c, f in zip(truth, cost_model.features(s, "decode", 16, 4), strict=True))
             for s in shapes]
    m = cost_model.fit(shapes, times, "decode", 16, 4)
    assert max(cost_model.relative_errors(m, shapes, times)) < 1e-6
    assert all(c >= 0 for c in m.coef)


# ---- selection on injected timings -------------------------------------------------------------


def test_a_speed_target_keeps_exactly_the_shapes_timed_within_it(tmp_path):
    space = _space()
    _fill_cache(tmp_path / "speed.json", [c.shape for c in space.candidates])
    figures = sorted(scripted(c.shape)["decode_ms"] for c in space.candidates)
    target = figures[len(figures) // 2]
    measure = Scripted()
    ss = _search(tmp_path, _budget(decode_ms=target), measure)
    kept = ss.narrow(space)
    assert measure.timed == []  # every timing came from the cache
    want = [c for c in space.candidates if scripted(c.shape)["decode_ms"] <= target]
    assert list(kept.candidates) == want and 0 < len(want) < len(space.candidates)
    assert kept.screened == tuple(range(len(want)))


def test_a_finalist_timed_too_slow_is_not_scored(tmp_path):
    """The model predicts from the fit shapes; one finalist runs far slower than predicted: timed for
    real, it is dropped and the next best of the screen takes its place."""
    space = _space()
    sampled = evenly_spaced(range(len(space.candidates)), 6)  # the shapes timed to fit the model
    slow = space.candidates[next(i for i in range(len(space.candidates) // 2, len(space.candidates))
                                 if i not in sampled)].shape

    def script(s):
        e = scripted(s)
        return {**e, "decode_ms": e["decode_ms"] * 3} if s == slow else e

    measure = Scripted(script)
    target = max(scripted(c.shape)["decode_ms"] for c in space.candidates)  # everything meets it, but `slow`
    ss = _search(tmp_path, _budget(decode_ms=target), measure)
    kept = ss.narrow(space)
    assert slow in [c.shape for c in kept.candidates]  # predicted within the budget
    i_slow = [c.shape for c in kept.candidates].index(slow)
    order = [i_slow] + [i for i in range(len(kept.candidates)) if i != i_slow]  # the screen liked it best
    chosen = ss.finalists(order, 3)
    assert chosen == order[1:4]
    assert slow in measure.timed
    doc = {"candidates": [{} for _ in kept.candidates]}
    ss.annotate(doc)
    row = doc["candidates"][i_slow]
    assert row["decode_ms"] == pytest.approx(3 * scripted(slow)["decode_ms"]) and row["predicted_decode_ms"] < target
    timed = {t["shape"]: t for t in doc["speed"]["timed"]}
    assert [t["meets"] for t in timed.values()].count(False) == 1
    assert doc["speed"]["error"]["decode"]["shapes"] >= 1 and doc["speed"]["target"]["decode_ms"] == target


def test_a_second_search_on_the_same_device_times_nothing(tmp_path):
    space = _space()
    first, second = Scripted(), Scripted()
    target = sorted(scripted(c.shape)["decode_ms"] for c in space.candidates)[-3]
    a = _search(tmp_path, _budget(decode_ms=target), first)
    kept_a = a.narrow(space)
    fin_a = a.finalists(list(range(len(kept_a.candidates))), 4)
    assert first.timed and not list(tmp_path.glob(".speed.json.*"))  # written by a rename: no temp file left
    b = _search(tmp_path, _budget(decode_ms=target), second)
    kept_b = b.narrow(space)
    assert b.finalists(list(range(len(kept_b.candidates))), 4) == fin_a and kept_b.candidates == kept_a.candidates
    assert second.timed == []
    # another device's timings are not this one's
    other = SpeedSearch(_budget(decode_ms=target), "cpu", {**WHERE, "device": "another"}, Scripted(),
                        SpeedCache(tmp_path / "speed.json"), [].append)
    other.narrow(space)
    assert other._measure.timed


def test_budgets_combine_speed_with_params_or_memory(tmp_path):
    """A shape must meet the parameter (or memory) target and every speed target."""
    wide, params = _space(tolerance=0.6), _space()
    _fill_cache(tmp_path / "speed.json", [c.shape for c in wide.candidates])
    in_band = sorted(scripted(c.shape)["decode_ms"] for c in params.candidates)
    decode = in_band[len(in_band) // 2]
    fast = {c.shape for c in wide.candidates if scripted(c.shape)["decode_ms"] <= decode}
    memory = _space(target_params=None, target_memory_gb=params.candidates[0].memory_gb)
    for space in (params, memory):
        both = _search(tmp_path, _budget(decode_ms=decode, prefill=16_000 / decode * 0.9), Scripted()).narrow(space)
        band = {c.shape for c in space.candidates}
        assert {c.shape for c in both.candidates} == band & fast
    band = {c.shape for c in params.candidates}
    assert band - fast and fast - band  # each target rules out shapes the other keeps
    prefill_only = _search(tmp_path, _budget(prefill=16_000 / decode), Scripted()).narrow(params)
    assert {c.shape for c in prefill_only.candidates} == band & fast


def test_no_shape_within_the_speed_budget_is_one_line(tmp_path):
    space = _space()
    _fill_cache(tmp_path / "speed.json", [c.shape for c in space.candidates])
    ss = _search(tmp_path, _budget(decode_ms=0.001), Scripted())
    from engine.errors import UserError

    with pytest.raises(UserError, match=r"prune\[s\]\.target_decode_ms: none of the \d+ candidates meets"):
        ss.narrow(space)


# ---- the experiment file: check's plan lines, bad input ----------------------------------------

SEARCH = """
[[prune]]
name = "fast"
method = "search"
target_params = 0.6
tolerance = 0.1
hidden_multiple = 8
ffn_multiple = 16
"""


def _exp(tmp_path, extra: str = "", arch_positions: int = 256) -> Path:
    text = SCRATCH.replace("num_key_value_heads = 2}", f"num_key_value_heads = 2, max_position_embeddings = "
                                                      f"{arch_positions}}}")
    return _write(tmp_path, text + SEARCH + extra, _lines())


@pytest.fixture
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_check_describes_the_speed_budget(tmp_path, capsys, _in_tmp):
    f = _exp(tmp_path, "target_decode_ms = 5\ntarget_prefill_tokens_per_s = 2000\nspeed_new_tokens = 8\n")
    assert main(["check", str(f)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "speed budget:" in x)
    assert "decode <= 5 ms/token and prefill >= 2,000 tokens/s, at batch 1, a 512 (GPU) / 64 (CPU)-token " \
           "prompt and 8 new tokens" in line and "12 shapes timed with random weights" in line, out


@pytest.mark.parametrize("keys,says", [
    ("target_decode_ms = -1", "target_decode_ms: input should be greater than 0"),
    ("target_prefill_tokens_per_s = 0", "target_prefill_tokens_per_s: input should be greater than 0"),
    ("target_decode_ms = inf", "target_decode_ms: input should be a finite number"),
    ("speed_batch_size = 4", "speed_batch_size: says how a speed target is measured, and there is none"),
    ("target_decode_ms = 5\nspeed_new_tokens = 1", "speed_new_tokens: input should be greater than or equal to 2"),
    ("target_decode_ms = 5\nspeed_prompt_tokens = 200\nspeed_new_tokens = 100",
     "speed_prompt_tokens: a speed budget at a 200-token prompt + 100 new tokens exceeds the teacher's "
     "max_position_embeddings = 256"),
])
def test_bad_speed_budgets_are_one_line_before_anything_is_written(tmp_path, capsys, _in_tmp, keys, says):
    err = _refused(tmp_path, _exp(tmp_path, keys + "\n"), capsys)
    assert says in err, err


def test_eval_lengths_the_teacher_cannot_hold_are_refused(tmp_path, capsys, _in_tmp):
    f = _exp(tmp_path, "target_decode_ms = 5\n[eval]\nspeed_prompt_tokens = 60\n", arch_positions=64)
    err = _refused(tmp_path, f, capsys)
    assert "prune[fast].speed_prompt_tokens: a speed budget at a 60-token prompt + 16 new tokens (the CPU's " \
           "default) exceeds the teacher's max_position_embeddings = 64" in err, err
    depth = _write(tmp_path, SCRATCH.replace('hidden_size = 32\n', 'hidden_size = 32\ntarget_decode_ms = 5\n'))
    assert "target_decode_ms: a search key in a width prune" in _refused(tmp_path, depth, capsys)
    only = _exp(tmp_path, "target_decode_ms = 5\n").read_text().replace("target_params = 0.6\n", "")
    assert "a search needs exactly one of target_params or target_memory_gb (a speed target narrows it)" in \
        _refused(tmp_path, _write(tmp_path, only), capsys)


# ---- the prune stage with a speed budget -------------------------------------------------------


def test_a_search_stage_scores_only_shapes_within_the_speed_budget(tmp_path, monkeypatch, capsys):
    """prune-<name> with target_decode_ms: the candidates in search.json all meet it (timings injected
    through the cache: nothing is timed), the scored ones were timed as finalists, and the "speed"
    section and the log state the budget and the cost model's error."""
    import numpy as np
    import torch
    from _prune_util import tiny_model
    from test_search import SEQ, _run, _tokenizer

    from engine.config import loads_experiment
    from engine.contract import RunLayout, read_json
    from engine.models.hf import save_model
    from engine.search.speed_timing import timing_where

    tok = _tokenizer()
    save_model(tiny_model("llama", layers=4, vocab_size=len(tok), tie_word_embeddings=False), tmp_path / "teacher", tok)
    data = tmp_path / "runs" / "t" / "prepare"
    data.mkdir(parents=True)
    splits = {"train": 20 * SEQ + 1, "validation": 8 * SEQ + 1}
    for split, n in splits.items():
        np.random.default_rng(0).integers(3, len(tok), size=n).astype(np.uint16).tofile(data / f"{split}.bin")
    (data / "meta.json").write_text(json.dumps({
        "vocab_size": len(tok), "dtype": "uint16", "eos_token_id": 2, "bos_token_id": 1, "tokenizer": "test",
        "tokenizer_hash": "x", "splits": {s: {"tokens": n, "documents": 1} for s, n in splits.items()}}))
    text = f"""name = "t"
runs_dir = "{tmp_path / 'runs'}"
[model]
path = "{tmp_path / 'teacher'}"
dtype = "float32"
[data]
dataset = "builtin:stdlib-docs"
seq_length = {SEQ}
[eval]
speed_prompt_tokens = 8
speed_new_tokens = 4
[[prune]]
name = "fast"
method = "search"
target_params = 0.6
tolerance = 0.06
hidden_multiple = 4
ffn_multiple = 4
calibration_samples = 8
calibration_batch_size = 4
top_k = 3
speed_fit_shapes = 6
target_decode_ms = TARGET
"""
    exp = loads_experiment(text.replace("TARGET", "1.0"), source="t.toml")
    space = search_space(shape_from_config(json.loads((tmp_path / "teacher" / "config.json").read_text())),
                         exp.prune[0], "x", "float32", SEQ)
    budget = speed_budget_for_exp(exp)
    where = timing_where(torch.device("cpu"), "float32", "sdpa", budget.settings("cpu"))
    cache = tmp_path / "speed.json"
    SpeedCache(cache).save({timing_key(where, c.shape): scripted(c.shape) for c in space.candidates})
    figures = sorted(scripted(c.shape)["decode_ms"] for c in space.candidates)
    target = figures[len(figures) // 2]
    exp = loads_experiment(text.replace("TARGET", repr(target)), source="t.toml")
    monkeypatch.setenv("SLIMLAB_SPEED_CACHE", str(cache))
    assert _run(exp, "prune-fast") == 0
    layout = RunLayout(exp.run_dir)
    doc = read_json(layout.search_file("prune-fast"))
    cands = doc["candidates"]
    want = [c for c in space.candidates if scripted(c.shape)["decode_ms"] <= target]
    assert len(cands) == len(want) < len(space.candidates)
    assert all(c["decode_ms"] <= target for c in cands)
    scored = [c for c in cands if c["score"] is not None]
    assert len(scored) == 3 and sum(c["chosen"] for c in scored) == 1
    speed = doc["speed"]
    assert speed["target"]["decode_ms"] == target and speed["target"]["prompt_tokens"] == 8
    assert speed["candidates_in_band"] == len(space.candidates) and speed["kept"] == len(want)
    assert speed["from_cache"] == len(space.candidates) and speed["error"]["decode"]["shapes"] >= 1
    assert "decode_ms" in doc["frontier"]["axes"]
    log = capsys.readouterr().out
    assert "cost model error on shapes it was not fitted to" in log and f"{len(want)} of {len(space.candidates)} " \
        "candidates kept" in log


def speed_budget_for_exp(exp):
    from engine.search.speed_budget import speed_budget_for

    return speed_budget_for(exp.prune[0], exp.eval)


def test_the_run_directory_keeps_a_speed_budget_as_written(tmp_path, _in_tmp):
    """The run's experiment.toml (every key not None) loads again: a search with a speed budget beside a
    depth prune and a search without one (no default of a speed key is written back as set)."""
    from engine.config import dumps_toml, load_experiment, loads_experiment

    text = _exp(tmp_path, "target_decode_ms = 5\nspeed_fit_shapes = 8\n").read_text() + SEARCH.replace('"fast"', '"plain"')
    exp = loads_experiment(text, source="t.toml")
    (tmp_path / "again.toml").write_text(dumps_toml(exp.to_toml_dict()))
    again = load_experiment(tmp_path / "again.toml")
    assert [(p.name, p.target_decode_ms, p.speed_fit_shapes) for p in again.prune] == \
        [("width", None, None), ("fast", 5.0, 8), ("plain", None, None)]


def test_a_gpu_run_is_refused_at_the_gpus_longer_default_lengths(tmp_path, capsys, _in_tmp, monkeypatch):
    """The CPU's default lengths fit a 256-position teacher, the GPU's (longer) do not: planning for a GPU
    (check --gpu-memory, or run where SLIMLAB_GPU_MEMORY_GIB says the GPUs are) refuses it up front, not in
    the prune stage."""
    f = _exp(tmp_path, "target_decode_ms = 5\n")
    assert main(["check", str(f)]) == 0
    capsys.readouterr()
    assert main(["check", str(f), "--gpu-memory", "80"]) == 2
    err = capsys.readouterr().err
    assert "(a GPU's default) exceeds the teacher's max_position_embeddings = 256" in err, err
    monkeypatch.setenv("SLIMLAB_GPU_MEMORY_GIB", "80")
    assert main(["run", str(f), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "a GPU's default" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
