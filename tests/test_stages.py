"""engine.stages: each kind's record, and the one rule for the config sections a stage depends on
(the config hash, the resume key and Compare's diff all follow it)."""

from __future__ import annotations

import copy

import pytest

from engine.config import parse_experiment
from engine.stages import (
    BASE,
    BY_NAME,
    KINDS,
    STUDENT_SECTIONS,
    config_sections,
    is_student_stage,
    kind_of,
    run_order,
    stage_student,
    student_or_none,
    student_sections,
)

RAW = {
    "name": "pin", "runs_dir": "runs", "seed": 3,
    "model": {"init": "scratch", "dtype": "float32", "tokenizer_train_vocab": 512,
              "arch": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                       "num_attention_heads": 4, "num_key_value_heads": 2}},
    "data": {"dataset": "builtin:stdlib-docs", "seq_length": 64},
    "finetune": {"steps": 5},
    "prune": [{"name": "depth", "method": "depth", "num_layers": 2},
              {"name": "width", "method": "width", "ffn_hidden_size": 64, "distill": {"temperature": 2.0}}],
    "distill": {"steps": 7},
    "eval": {"splits": ["validation"]},
}

# Computed by the code before engine/stages existed: a finished stage of an existing run must keep its
# hash (a changed hash reruns it).
PINNED = {"prepare": "92b37a4f094fbdd7", "finetune": "caff578128511b47", "prune-depth": "6b3f855b65c85d52",
          "prune-width": "18eb44105109d3aa", "distill-depth": "9acf3f1a8d2bc103",
          "distill-width": "1f8ee53ade13b44b", "eval": "63d87b6c6d771533"}

# One key per section, changed to another valid value
CHANGES = {
    "model": ("model", "dtype", "bfloat16"), "data": ("data", "seq_length", 32), "seed": ("seed", None, 4),
    "finetune": ("finetune", "steps", 6), "distill": ("distill", "steps", 8), "eval": ("eval", "splits", ["test"]),
}


def _exp(raw=RAW):
    return parse_experiment(copy.deepcopy(raw), source="pin")


def test_stage_hashes_are_unchanged_for_existing_runs():
    exp = _exp()
    assert {s: exp.stage_hash(s) for s in exp.stages()} == PINNED


@pytest.mark.parametrize("stage", list(PINNED))
@pytest.mark.parametrize("section", [*CHANGES, "prune-own", "prune-other"])
def test_a_stage_hash_follows_its_config_sections(stage, section):
    """Changing a key changes a stage's hash exactly when its section is one the stage depends on."""
    raw = copy.deepcopy(RAW)
    if section.startswith("prune-"):
        own = student_or_none(stage) or "depth"
        name = own if section == "prune-own" else ({"depth", "width"} - {own}).pop()
        raw["prune"][[p["name"] for p in raw["prune"]].index(name)]["calibration_samples"] = 17
        top = "prune"
        # a whole-run stage reads every student; a student's stage reads its own table only
        expected = "prune" in config_sections(kind_of(stage).name) and (
            section == "prune-own" or student_or_none(stage) is None)
    else:
        top, key, value = CHANGES[section]
        if key is None:
            raw[top] = value
        else:
            raw[top][key] = value
        expected = top in BASE or top in config_sections(kind_of(stage).name)
    changed = _exp(raw).stage_hash(stage) != PINNED[stage]
    assert changed == expected, (stage, section, top)


def test_a_students_distill_override_is_its_own():
    raw = copy.deepcopy(RAW)
    raw["prune"][1]["distill"] = {"temperature": 3.0}
    exp = _exp(raw)
    assert exp.stage_hash("distill-width") != PINNED["distill-width"]
    assert exp.stage_hash("distill-depth") == PINNED["distill-depth"]


def test_sections_and_names():
    assert config_sections("prepare") == ()
    assert config_sections("distill") == ("finetune", "prune", "distill")
    assert config_sections("eval") == ("finetune", "prune", "distill", "eval")
    assert STUDENT_SECTIONS == ("prune", "distill")
    assert student_sections("distill-width") == {"prune", "distill"}
    assert student_sections("prune-width") == {"prune"}
    assert student_sections("eval") == student_sections("finetune") == student_sections("teacher") == set()
    for k in KINDS:
        stage = k.stage("a-b") if k.per_student else k.stage()
        assert kind_of(stage) is k and BY_NAME[k.name] is k
        assert is_student_stage(stage) == k.per_student
        assert student_or_none(stage) == ("a-b" if k.per_student else None)
    assert stage_student("distill-a-b") == "a-b"
    with pytest.raises(ValueError):
        BY_NAME["prune"].stage()
    with pytest.raises(ValueError):
        BY_NAME["eval"].stage("x")


def test_run_order_places_left_over_stages_among_their_kind():
    planned = ["prepare", "prune-a", "distill-a", "eval"]
    assert run_order(planned, ["prune-old", "distill-a", "x"]) == [
        "prepare", "prune-a", "prune-old", "distill-a", "eval", "x"]
    # more than 99 planned stages keep their plan order (no fixed index for the left-over ones)
    many = ["prepare"] + [f"prune-s{i:03d}" for i in range(120)] + ["eval"]
    assert run_order(many, ["prune-zzz"]) == many[:-1] + ["prune-zzz", "eval"]


def test_every_body_a_kind_names_is_a_function():
    import importlib

    for k in KINDS:
        for ref in filter(None, (k.body, k.group_body)):
            module, func = ref.split(":")
            assert callable(getattr(importlib.import_module(module), func)), ref
