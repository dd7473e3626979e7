"""Experiment-file schema: every user mistake is one line naming file, key and fix; exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import (
    ConfigError,
    apply_override,
    dumps_toml,
    load_experiment,
    loads_experiment,
    parse_experiment,
)

BASE = """
name = "t"
[model]
path = "some/model"
[data]
dataset = "wikitext"
config = "wikitext-103-v1"
"""


def _err(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        loads_experiment(text, source="exp.toml")
    msg = str(e.value)
    assert "\n" not in msg, "a user error must be one line"
    assert msg.startswith("exp.toml: ")
    return msg


def test_minimal_file_has_defaults():
    exp = loads_experiment(BASE)
    assert exp.stages() == ["prepare"]
    assert exp.model.dtype == "bfloat16" and exp.launch.gpus == "all"


def test_unknown_key_suggests_closest():
    msg = _err(BASE + "[finetune]\nstpes = 3\n")
    assert "unknown key 'finetune.stpes'" in msg and "did you mean 'steps'" in msg


def test_unknown_top_level_key_lists_valid_ones_when_nothing_is_close():
    msg = _err("zzzzzz = 1\n" + BASE)
    assert "unknown key 'zzzzzz'" in msg and "valid keys:" in msg and "runs_dir" in msg


def test_unknown_key_in_prune_names_the_student():
    msg = _err(BASE + '[[prune]]\nname = "w"\nmethod = "width"\nhiden_size = 8\n')
    assert "prune[w].hiden_size" in msg and "did you mean 'hidden_size'" in msg


def test_wrong_type():
    msg = _err(BASE.replace('config = "wikitext-103-v1"', 'seq_length = "long"'))
    assert "data.seq_length" in msg and "integer" in msg and "'long'" in msg


def test_out_of_range_value():
    msg = _err(BASE + "[distill]\ntemperature = -1.0\n" + '[[prune]]\nname = "d"\nmethod = "depth"\nnum_layers = 2\n')
    assert "distill.temperature" in msg and "greater than 0" in msg


def test_bad_choice_lists_the_options():
    msg = _err(BASE + '[distill]\nloss = "kl"\n[[prune]]\nname = "d"\nmethod = "depth"\nnum_layers = 2\n')
    assert "distill.loss" in msg and "forward_kl" in msg and "'kl'" in msg


def test_missing_required_section():
    assert "missing required section [data]" in _err('name = "t"\n[model]\npath = "m"\n')
    assert "missing required section [model]" in _err('name = "t"\n[data]\ndataset = "w"\n')


def test_cross_field_rules():
    assert "min_lr" in _err(BASE + "[finetune]\nlr = 1e-5\nmin_lr = 1e-4\n")
    assert "micro_batch_size" in _err(BASE + "[finetune]\nglobal_batch_size = 10\nmicro_batch_size = 4\n")
    assert "exactly one of drop_layers or num_layers" in _err(
        BASE + '[[prune]]\nname = "d"\nmethod = "depth"\n')
    assert "at least one of" in _err(BASE + '[[prune]]\nname = "w"\nmethod = "width"\n')
    assert "unique name" in _err(BASE + '[[prune]]\nname = "d"\nmethod = "depth"\nnum_layers = 1\n' * 2)
    assert "needs an arch table" in _err(BASE.replace('path = "some/model"', 'init = "scratch"'))
    assert "[distill] needs at least one [[prune]]" in _err(BASE + "[distill]\nsteps = 2\n")


def test_optimizer_states_bfloat16_is_checked_against_fsdp_and_adam_beta2():
    exp = loads_experiment(BASE + '[finetune]\noptimizer_states = "bfloat16"\n', source="exp.toml")
    assert exp.finetune.optimizer_states == "bfloat16"
    assert loads_experiment(BASE + "[finetune]\n", source="exp.toml").finetune.optimizer_states == "float32"
    assert "input should be 'float32', 'bfloat16' or 'int8'" in _err(BASE + '[finetune]\noptimizer_states = "int4"\n')
    fsdp = '[launch]\nstrategy = "fsdp"\n'
    msg = _err(BASE + '[finetune]\noptimizer_states = "bfloat16"\n' + fsdp)
    assert 'optimizer_states: "bfloat16" in [finetune] is not available under [launch] strategy = "fsdp"' in msg
    assert 'set optimizer_states = "float32" or strategy = "ddp"' in msg
    student = '[[prune]]\nname = "d"\nmethod = "depth"\nnum_layers = 1\ndistill = {optimizer_states = "bfloat16"}\n'
    assert "in prune 'd' distill is not available" in _err(BASE + student + "[distill]\n" + fsdp)
    assert loads_experiment(BASE + '[finetune]\noptimizer_states = "float32"\n' + fsdp, source="exp.toml")
    msg = _err(BASE + '[finetune]\noptimizer_states = "bfloat16"\nadam_beta2 = 0.999\n')
    assert "adam_beta2: 0.999 with optimizer_states = \"bfloat16\"" in msg and "adam_beta2 <= 0.99" in msg
    assert loads_experiment(BASE + '[finetune]\nadam_beta2 = 0.999\n', source="exp.toml")


def test_invalid_toml_and_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        loads_experiment("name = ", source="exp.toml")
    with pytest.raises(ConfigError, match="no such file"):
        load_experiment(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_experiment(tmp_path)


def test_set_overrides_dotted_keys_and_students_by_name():
    text = BASE + '[distill]\nsteps = 3\n[[prune]]\nname = "width"\nmethod = "width"\nhidden_size = 64\n'
    exp = loads_experiment(text, overrides=("distill.steps=100", "prune.width.hidden_size=32",
                                            "launch.gpus=[0, 1]", "model.dtype=float32"))
    assert exp.distill.steps == 100 and exp.prune[0].hidden_size == 32
    assert exp.launch.gpus == [0, 1] and exp.model.dtype == "float32"
    with pytest.raises(ConfigError, match="no \\[\\[prune\\]\\] named 'depth'"):
        loads_experiment(text, overrides=("prune.depth.num_layers=2",))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_override({}, "distill.steps")


def test_resolved_config_round_trips_through_toml():
    text = (BASE + '[finetune]\nsteps = 7\n[distill]\nsteps = 3\nlayer_map = [[0, 1], [1, 3]]\n'
            '[[prune]]\nname = "d"\nmethod = "depth"\ndrop_layers = [1, 2]\n'
            '[[prune]]\nname = "w"\nmethod = "width"\nffn_hidden_size = 64\n'
            '[launch]\nstage_gpus = {"distill-w" = [1]}\n')
    exp = loads_experiment(text)
    again = loads_experiment(dumps_toml(exp.to_toml_dict()))
    assert again.model_dump() == exp.model_dump()
    assert again.stages() == ["prepare", "finetune", "prune-d", "prune-w", "distill-d", "distill-w"]


def test_stage_hash_tracks_only_a_stage_and_its_inputs():
    text = (BASE + '[distill]\nsteps = 3\n[[prune]]\nname = "d"\nmethod = "depth"\nnum_layers = 2\n'
            '[[prune]]\nname = "w"\nmethod = "width"\nffn_hidden_size = 64\n')
    a = loads_experiment(text)
    b = loads_experiment(text, overrides=("prune.w.ffn_hidden_size=32",))
    assert a.stage_hash("prune-d") == b.stage_hash("prune-d")
    assert a.stage_hash("distill-d") == b.stage_hash("distill-d")
    assert a.stage_hash("prune-w") != b.stage_hash("prune-w")
    assert a.stage_hash("distill-w") != b.stage_hash("distill-w")
    assert a.stage_hash("prepare") == b.stage_hash("prepare")


def test_parse_sets_source_for_messages():
    exp = parse_experiment({"name": "t", "model": {"path": "m"}, "data": {"dataset": "w"}}, source="x.toml")
    with pytest.raises(ConfigError, match="^x.toml: no \\[\\[prune\\]\\] named 'q'"):
        exp.prune_by_name("q")


def test_cli_user_error_is_one_line_exit_2_no_traceback(tmp_path: Path):
    f = tmp_path / "bad.toml"
    f.write_text(BASE + "[finetune]\nstpes = 3\n")
    r = subprocess.run([sys.executable, "-m", "engine", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert f"{f}: unknown key 'finetune.stpes'; did you mean 'steps'?" in r.stderr
    r = subprocess.run([sys.executable, "-m", "engine", "check", str(tmp_path / "nope.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_light_modules_import_neither_torch_nor_transformers_nor_the_app():
    code = ("import sys, engine.config, engine.contract, engine.orchestration.check, engine.orchestration.stage_process, engine.cli\n"
            "bad = [m for m in ('torch', 'transformers', 'textual', 'app') if m in sys.modules]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_per_student_distill_overrides_are_validated_and_applied():
    text = (BASE + '[distill]\nsteps = 3\nloss = "forward_kl"\n'
            '[[prune]]\nname = "w"\nmethod = "width"\nffn_hidden_size = 64\ndistill = {loss = "ce"}\n'
            '[[prune]]\nname = "d"\nmethod = "depth"\nnum_layers = 2\n')
    exp = loads_experiment(text)
    assert exp.distill_for("w").loss == "ce" and exp.distill_for("d").loss == "forward_kl"
    assert exp.distill_for("w").steps == 3
    assert "prune 'w': distill.loss" in _err(text.replace('{loss = "ce"}', '{loss = "l1"}'))
    assert "prune 'w': distill.stepz" in _err(text.replace('{loss = "ce"}', '{stepz = 1}'))


def test_stage_hash_ignores_keys_left_at_their_defaults():
    text = BASE + '[finetune]\nsteps = 3\n'
    a = loads_experiment(text)
    b = loads_experiment(text, overrides=("finetune.weight_decay=0.1", "data.workers=4"))  # the defaults
    c = loads_experiment(text, overrides=("finetune.weight_decay=0.2",))
    assert a.stage_hash("finetune") == b.stage_hash("finetune") != c.stage_hash("finetune")


@pytest.mark.parametrize("extra, key", [
    ("[finetune]\nsteps = true\n", "finetune.steps"),
    ("[finetune]\nlr = true\n", "finetune.lr"),
    ("seed = false\n[finetune]\n", "seed"),
    ("[launch]\ngpus = [true]\n", "launch.gpus"),
    ("[[prune]]\nname = \"d\"\nmethod = \"depth\"\ndrop_layers = [false]\n", "prune[d].drop_layers"),
])
def test_booleans_are_not_numbers(extra: str, key: str):
    """TOML true/false would pass as 1/0 (steps = true was 1 step, lr = true an lr of 1.0)."""
    text = BASE.replace('name = "t"\n', 'name = "t"\n' + extra) if extra.startswith("seed") else BASE + extra
    assert f"exp.toml: {key}: " in _err(text) and "not a number" in _err(text)


def test_booleans_are_not_numbers_in_overrides_and_student_distill_tables():
    with pytest.raises(ConfigError, match="finetune.lr: true is not a number"):
        loads_experiment(BASE + "[finetune]\n", source="exp.toml", overrides=("finetune.lr=true",))
    text = (BASE + "[distill]\n[[prune]]\nname = \"w\"\nmethod = \"width\"\nffn_hidden_size = 64\n"
            "distill = {steps = true}\n")
    assert "prune 'w': distill" in _err(text)
    assert loads_experiment(BASE + "[finetune]\ncompile = true\n").finetune.compile  # real booleans stay


def test_upper_bounds_catch_typos():
    assert "finetune.weight_decay" in _err(BASE + "[finetune]\nweight_decay = 10\n")
    assert "distill.kd_weight" in _err(BASE + "[distill]\nkd_weight = 1e9\n[[prune]]\nname = \"d\"\n"
                                       "method = \"depth\"\nnum_layers = 1\n")


SCRATCH = """
name = "t"
[model]
init = "scratch"
tokenizer_train_vocab = 512
arch = {model_type = "llama", hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2}
[data]
dataset = "builtin:stdlib-docs"
[finetune]
"""


def _arch(**changes) -> str:
    arch = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, **changes}
    table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in arch.items() if v is not None)
    return SCRATCH.replace(SCRATCH.splitlines()[5], f"arch = {{{table}}}")


def test_arch_keys_are_checked_against_the_config_class():
    """A typo built a default-sized (482M) teacher: transformers keeps unknown keys without a word."""
    loads_experiment(_arch(rope_theta=10000.0, tie_word_embeddings=True))  # real keys, legacy ones too
    assert "model.arch.hidden_sise: not a key of transformers' llama config; did you mean 'hidden_size'?" in \
        _err(_arch(hidden_size=None, hidden_sise=64))
    assert "model.arch.model_type: 'gpt2' is not supported" in _err(_arch(model_type="gpt2"))


def test_arch_shapes_are_checked():
    assert "num_key_value_heads: 3 does not divide num_attention_heads = 4" in _err(_arch(num_key_value_heads=3))
    assert "num_attention_heads: 6 does not divide hidden_size = 64" in _err(_arch(num_attention_heads=6,
                                                                                   num_key_value_heads=1))
    assert "arch.hidden_size: 0 is not a positive whole number" in _err(_arch(hidden_size=0))
    loads_experiment(_arch(model_type="qwen3", num_attention_heads=6, num_key_value_heads=3))  # head_dim 128


def test_arch_keys_known_to_the_checker_cover_the_config_classes():
    """The keys read from transformers' source are every key its config classes write."""
    from transformers import AutoConfig

    from engine.config.arch import SUPPORTED_MODEL_TYPES, config_keys

    for model_type in SUPPORTED_MODEL_TYPES:
        written = set(AutoConfig.for_model(model_type).to_dict()) - {"_name_or_path"}
        assert written <= config_keys(model_type), model_type
