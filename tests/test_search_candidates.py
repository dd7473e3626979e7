"""Search candidates from the teacher's config alone (torch-free): budgets, tolerance, validity, the
candidates chosen for scoring, what `check` prints, and one-line errors for impossible targets."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import ConfigError, PruneConfig, loads_experiment
from engine.config.counts import parse_param_count
from engine.config.shape import count_params, shape_from_config, student_shape
from engine.orchestration.check import describe_plan
from engine.shapes.budget import budget_for, memory_gib
from engine.shapes.candidates import enumerate_candidates, evenly_spaced, search_space
from engine.shapes.targets import student_shapes

ROOT = Path(__file__).resolve().parents[1]
TEACHER = dict(model_type="llama", vocab_size=1000, hidden_size=96, intermediate_size=256, num_hidden_layers=8,
               num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)


def _teacher(**kw):
    return shape_from_config({**TEACHER, **kw})


def _search(**kw) -> PruneConfig:
    return PruneConfig(name="s", method="search", **{"hidden_multiple": 12, "ffn_multiple": 16, **kw})


def _exp(prune: str, extra: str = ""):
    arch = ", ".join(f"{k} = {v!r}".replace("'", '"').replace("True", "true") for k, v in TEACHER.items())
    return loads_experiment(f"""
name = "s"
[model]
init = "scratch"
arch = {{{arch}}}
tokenizer_train_vocab = 1000
[data]
dataset = "builtin:stdlib-docs"
seq_length = 64
[finetune]
steps = 1
{extra}
[[prune]]
name = "s"
{prune}
""", source="s.toml")


@pytest.mark.parametrize("value,want", [(0.6, 0.6), (1.0, 1.0), (81_000_000, 81_000_000), ("4.5B", 4_500_000_000),
                                        ("81M", 81_000_000), ("500k", 500_000), ("2_000_000", 2_000_000),
                                        (4.5e9, 4_500_000_000)])
def test_param_counts_absolute_or_fraction(value, want):
    got = parse_param_count(value)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("value", ["lots", "4.5X", -3, 0, 12, True])
def test_bad_param_count_is_one_line_at_load(value):
    v = f'"{value}"' if isinstance(value, str) else str(value).lower()
    with pytest.raises(ConfigError) as e:
        _exp(f'method = "search"\ntarget_params = {v}')
    assert "\n" not in str(e.value) and "target_params" in str(e.value)


def test_every_candidate_is_valid_and_within_tolerance():
    t = _teacher()
    p = _search(target_params=0.6, tolerance=0.04,
                axes=["num_layers", "hidden_size", "ffn_hidden_size", "num_key_value_heads"])
    b = budget_for(p, t, "bfloat16", 64)
    assert b.target == pytest.approx(0.6 * count_params(t))
    cands = enumerate_candidates(t, p, b, "x")
    assert len(cands) > 20
    for c in cands:
        s = c.shape
        assert c.params == count_params(s) and abs(c.params - b.target) <= 0.04 * b.target
        assert s.hidden_size % 12 == 0 or s.hidden_size == t.hidden_size
        assert s.intermediate_size % 16 == 0 or s.intermediate_size == t.intermediate_size
        assert s.num_heads == s.num_kv_heads * t.group_size  # heads follow their KV groups (heads not searched)
        q = PruneConfig(name="x", method="width", hidden_size=s.hidden_size, ffn_hidden_size=s.intermediate_size,
                        num_key_value_heads=s.num_kv_heads, num_layers=s.num_layers)
        assert student_shape(t, q, "x").shape == s  # what a hand-written width target would build
    assert len({c.shape for c in cands}) == len(cands)


def test_enumeration_matches_brute_force():
    """The ffn range is solved, not scanned: compare with scanning every value."""
    t = _teacher()
    p = _search(target_params=300_000, tolerance=0.05)
    b = budget_for(p, t, "bfloat16", 64)
    want = set()
    for n, h, f in itertools.product(range(1, 9), range(12, 97, 12), list(range(16, 257, 16))):
        q = PruneConfig(name="x", method="width", hidden_size=h, ffn_hidden_size=f, num_layers=n)
        try:
            s = student_shape(t, q, "x").shape
        except ConfigError:
            continue
        if b.fits(count_params(s)):
            want.add(s)
    assert {c.shape for c in enumerate_candidates(t, p, b, "x")} == want and want


def test_memory_budget_fits_below_the_target():
    t = _teacher()
    full = memory_gib(t, "float32", 512, 4)
    kv = 2 * 8 * 2 * 16 * 512 * 4 * 4 / 2**30
    assert full == pytest.approx(count_params(t) * 4 / 2**30 + kv)
    p = _search(target_memory_gb=0.7 * full, memory_seq_length=512, memory_batch_size=4, tolerance=0.05)
    space = search_space(t, p, "x", "float32", 64)
    assert space.candidates
    for c in space.candidates:
        assert 0.95 * 0.7 * full <= c.memory_gb <= 0.7 * full
        assert c.memory_gb == pytest.approx(memory_gib(c.shape, "float32", 512, 4))


def test_every_candidate_is_screened_up_to_screen_max_spread_deep_to_wide():
    t = _teacher()
    space = search_space(t, _search(target_params=0.6, tolerance=0.05, top_k=4), "x", "bfloat16", 64)
    n = len(space.candidates)
    assert n > 6 and space.screened == tuple(range(n)) and not space.capped  # every candidate
    assert "screens all by the loss on 2 batches, then scores the best 4" in space.describe()
    capped = search_space(t, _search(target_params=0.6, tolerance=0.05, top_k=4, screen_max=5), "x", "bfloat16", 64)
    assert len(capped.screened) == 5 and capped.capped and len(set(capped.screened)) == 5
    assert capped.screened[0] == 0 and capped.screened[-1] == n - 1  # the deepest and the widest
    layers = [capped.candidates[i].shape.num_layers for i in capped.screened]
    assert layers == sorted(layers, reverse=True)
    assert capped.cap_message().startswith(f"{n} candidates, more than screen_max = 5: 5 are screened")
    assert evenly_spaced(range(10), 3) == (0, 4, 9) and evenly_spaced([7, 8], 5) == (7, 8)
    assert len(set(evenly_spaced(range(1000), 999))) == 999


def test_check_lists_the_search():
    exp = _exp('method = "search"\ntarget_params = 0.6\nhidden_multiple = 12\nffn_multiple = 16\ntop_k = 3')
    text = "\n".join(describe_plan(exp))
    _, _, (space,) = student_shapes(exp)
    lo, hi = space.param_range()
    assert f"{len(space.candidates)} candidates" in text and "then scores the best 3 by validation loss" in text
    capped = _exp('method = "search"\ntarget_params = 0.6\nhidden_multiple = 12\nffn_multiple = 16\nscreen_max = 4')
    assert "more than screen_max = 4: 4 are screened" in "\n".join(describe_plan(capped))
    assert "layers by lm-loss: costs 9 extra forwards per calibration batch" in text
    shown = [line for line in text.splitlines() if re.match(r"\s+\d+L h\d+ ffn\d+ \d+/\d+: .* GiB$", line)]
    assert len(shown) == 5 and len(space.candidates) > 5  # the first few candidates, deepest to widest


@pytest.mark.parametrize("prune,what", [
    ('target_params = 1_000', "no shape over num_layers, hidden_size, ffn_hidden_size"),
    ('target_params = "5M"', "is not below the teacher's"),
    ('target_params = 0.6\naxes = ["num_key_value_heads"]', "raise tolerance, add axes"),
    ('target_memory_gb = 1e-9', "no shape over"),
    ('target_params = 0.6\nscore = "distill"', "add a [distill] section"),
    ('target_params = 0.6\nscore = "distill+loss"', "\"distill+loss\" runs a short [distill]"),
    ('target_params = 0.6\nscore_task = "hellaswag"', "is not one of [eval] tasks"),
])
def test_impossible_target_is_one_line_at_check(prune, what):
    exp = _exp('method = "search"\n' + prune)
    with pytest.raises(ConfigError) as e:
        describe_plan(exp)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("s.toml: prune[s].") and what in msg


def test_a_task_scored_search_needs_no_distill_section():
    # score_task decides the score, so score = "distill" beside it runs no short distillation
    extra = '[eval]\ntasks = ["hellaswag"]'
    exp = _exp('method = "search"\ntarget_params = 0.6\nscore = "distill"\nscore_task = "hellaswag"', extra)
    assert exp.distill is None and "candidates" in "\n".join(describe_plan(exp))


@pytest.mark.parametrize("prune,what", [
    ('method = "search"', "exactly one of target_params or target_memory_gb"),
    ('method = "search"\ntarget_params = 0.5\nhidden_size = 64', "a search chooses the shape itself"),
    ('method = "depth"\nnum_layers = 2\ntarget_params = 0.5', "a search key in a depth prune"),
    ('method = "search"\ntarget_params = 0.5\naxes = ["hidden_size", "hidden_size"]', "name each searched axis once"),
    ('method = "width"\nhidden_size = 48\ndrop_layers = [1]', "a width prune drops layers by num_layers"),
])
def test_bad_search_keys_are_rejected_at_load(prune, what):
    with pytest.raises(ConfigError) as e:
        _exp(prune)
    assert "\n" not in str(e.value) and what in str(e.value)


def test_width_with_num_layers_and_selection_defaults():
    t = _teacher()
    w = student_shape(t, PruneConfig(name="w", method="width", hidden_size=48, num_layers=5), "x")
    assert (w.shape.num_layers, w.num_drop, w.selection) == (5, 3, "lm-loss")
    d = student_shape(t, PruneConfig(name="d", method="depth", num_layers=5), "x")
    assert d.selection == "block-influence"  # depth keeps its default
    with pytest.raises(ConfigError, match="num_layers: 9 is larger"):
        student_shape(t, PruneConfig(name="w", method="width", hidden_size=48, num_layers=9), "x")
    text = "\n".join(describe_plan(_exp('method = "width"\nhidden_size = 48\nnum_layers = 5\n'
                                        'selection = "block-influence"')))
    assert "layers 8->5, hidden 96->48" in text and "layers by block-influence: costs nothing extra: the calibration pass" in text


def test_check_and_search_stay_torch_free(tmp_path):
    f = tmp_path / "s.toml"
    arch = ", ".join(f"{k} = {v!r}".replace("'", '"').replace("True", "true") for k, v in TEACHER.items())
    f.write_text(f'name = "s"\n[model]\ninit = "scratch"\narch = {{{arch}}}\ntokenizer_train_vocab = 1000\n[data]\ndataset = "x"\n'
                 '[finetune]\nsteps = 1\n[[prune]]\nname = "s"\nmethod = "search"\ntarget_params = 1000\n')
    r = subprocess.run([sys.executable, "-m", "engine.cli", "check", str(f)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "target_params" in r.stderr, r.stderr
    ok = subprocess.run([sys.executable, "-c", "import sys, engine.shapes.candidates, engine.shapes.targets; "
                         "print([m for m in ('torch', 'transformers') if m in sys.modules])"],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.stdout.strip() == "[]", ok.stderr
