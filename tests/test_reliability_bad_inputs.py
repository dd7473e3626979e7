"""Issue 25's hostile pass: bad input that ran first and failed late, or gave a traceback or a misleading
line. Each is refused before anything is written, with one line and exit code 2. Torch-free."""

from __future__ import annotations

import os

import pytest
from test_reliability_inputs import SCRATCH, _lines, _refused, _write

from engine.cli import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative data paths resolve here, never in the checkout
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_a_runs_dir_that_cannot_be_written(tmp_path, capsys):
    f = _write(tmp_path, SCRATCH, _lines())
    for runs in ("/proc/slimlab-runs", *(() if os.geteuid() == 0 else (str(tmp_path / "ro" / "runs"),))):
        (tmp_path / "ro").mkdir(mode=0o555, exist_ok=True)
        assert main(["run", str(f), "--runs-dir", runs]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot write in" in err and "--runs-dir" in err, err


@pytest.mark.parametrize("override,says", [
    ("seed=-1", "seed: input should be greater than or equal to 0"),
    ("data.seed=-1", "data.seed: input should be greater than or equal to 0"),
    ("finetune.seed=-1", "finetune.seed: input should be greater than or equal to 0"),
    ('model.arch.rms_norm_eps="x"', "model.arch.rms_norm_eps: 'x' is not a number"),
    ("model.arch.rms_norm_eps=nan", "model.arch.rms_norm_eps: nan is not a finite number"),
    ('data.seq_length="128"', 'data.seq_length: "128" is a string, not a number'),
    ('finetune.lr="0.001"', 'finetune.lr: "0.001" is a string, not a number'),
    ('finetune.compile="yes"', 'finetune.compile: "yes" is not a boolean; write true or false'),
    ("finetune.steps=9223372036854775807", "finetune.steps: input should be less than or equal to 100000000"),
    ('source="elsewhere.toml"', "unknown key 'source'"),
    ("data.seq_length=1000000", "data.seq_length: 1000000 is longer than the train data can be"),
    ('data.dataset="builtin:nope"', "data.dataset: unknown builtin 'builtin:nope'"),
    ('data.prepared="nope"', "data.prepared: no folder 'nope'"),
    ("data.max_tokens=16", "data.max_tokens: 16 caps the train split below one window of seq_length + 1 = 33"),
])
def test_hostile_values_are_refused_before_anything_is_written(tmp_path, capsys, override, says):
    f = _write(tmp_path, SCRATCH, _lines())
    extra = ("--set", "data.train_files=[]") if override.startswith(("data.dataset", "data.prepared")) else ()
    err = _refused(tmp_path, f, capsys, "--set", override, *extra)
    assert says in err, err


def test_a_junk_prepared_folder_is_refused(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "meta.json").write_text("{")
    f = _write(tmp_path, SCRATCH, _lines())
    err = _refused(tmp_path, f, capsys, "--set", 'data.prepared="junk"', "--set", "data.train_files=[]")
    assert "data.prepared: " in err and "has no readable meta.json" in err, err


def test_a_plain_text_file_named_gz_and_a_cut_gz(tmp_path, capsys):
    import gzip

    f = _write(tmp_path, SCRATCH.replace("train.jsonl", "train.jsonl.gz"))
    (tmp_path / "train.jsonl.gz").write_text(_lines())
    assert "named .gz but not gzip-compressed" in _refused(tmp_path, f, capsys)
    (tmp_path / "train.jsonl.gz").write_bytes(gzip.compress(_lines().encode())[:60])
    assert "cannot be decompressed" in _refused(tmp_path, f, capsys)


def test_a_byte_order_mark_is_named(tmp_path, capsys):
    f = tmp_path / "exp.toml"
    f.write_bytes(b"\xef\xbb\xbf" + SCRATCH.encode())
    (tmp_path / "train.jsonl").write_text(_lines())
    assert "starts with a UTF-8 byte-order mark (BOM)" in _refused(tmp_path, f, capsys)


def test_target_params_two_point_oh_says_fraction_or_billions(tmp_path, capsys):
    search = SCRATCH.replace('method = "width"\nhidden_size = 32',
                             'method = "search"\ntarget_params = 2.0\naxes = ["hidden_size"]')
    f = _write(tmp_path, search, _lines())
    err = _refused(tmp_path, f, capsys)
    assert "neither a fraction of the teacher (that is at most 1" in err and 'write "2B"' in err, err


def test_an_empty_gpu_range_is_refused(tmp_path, capsys):
    f = _write(tmp_path, SCRATCH, _lines())
    assert main(["run", str(f), "--gpus", "3-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'3-1' is an empty range" in err, err
    assert not (tmp_path / "runs").exists()


def test_status_of_a_plain_folder_and_compare_into_a_file(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert main(["status", str(tmp_path / "plain")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    from engine.contract import RunLayout, StageStatus

    run = RunLayout(tmp_path / "runs" / "r")
    run.root.mkdir(parents=True)
    run.experiment_file.write_text('name = "r"\n[model]\npath = "m"\n[data]\ndataset = "w"\n')
    StageStatus(run.stage_dir("prepare"), "prepare").finish("succeeded")
    (tmp_path / "existing.md").write_text("mine")
    assert main(["compare", str(run.root), "--out", str(tmp_path / "existing.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out: " in err and "is a file; give a folder" in err, err
    assert (tmp_path / "existing.md").read_text() == "mine"


def _teacher(tmp_path, capsys):
    from test_reliability_inputs import PRETRAINED, _model_dir

    m = _model_dir(tmp_path / "m")
    return m, _write(tmp_path, PRETRAINED.format(model=m), _lines())


def test_a_model_folder_without_weights(tmp_path, capsys):
    m, f = _teacher(tmp_path, capsys)
    (m / "model.safetensors").unlink()
    assert "holds no weights (none of model.safetensors" in _refused(tmp_path, f, capsys)


def test_a_truncated_teacher_safetensors(tmp_path, capsys):
    import struct

    m, f = _teacher(tmp_path, capsys)
    header = b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}'
    (m / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 30)  # 34 bytes short
    err = _refused(tmp_path, f, capsys)
    assert "has a damaged weight file: model.safetensors: " in err and "truncated" in err, err


def test_a_weight_index_naming_a_missing_shard(tmp_path, capsys):
    m, f = _teacher(tmp_path, capsys)
    (m / "model.safetensors").rename(m / "model-00001-of-00002.safetensors")
    (m / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}')
    assert "names model-00002-of-00002.safetensors, which is not in" in _refused(tmp_path, f, capsys)


def test_a_corrupt_tokenizer_json(tmp_path, capsys):
    m, f = _teacher(tmp_path, capsys)
    (m / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    assert "tokenizer.json is not valid JSON" in _refused(tmp_path, f, capsys)


def test_a_single_stage_before_its_inputs_writes_nothing(tmp_path, capsys):
    f = _write(tmp_path, SCRATCH, _lines())
    assert main(["distill", str(f), "--stage", "width"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "distill-width reads the output of prepare, which is not there yet" in err, err
    assert not (tmp_path / "runs").exists()


def test_importance_from_a_junk_file_or_another_teachers(tmp_path, capsys):
    import json

    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"model": {"num_layers": 32, "hidden_size": 4096, "intermediate_size": 14336,
                                           "num_attention_heads": 32, "num_key_value_heads": 8},
                                 "layers": {"block_influence": [0.0] * 32}}))
    for path, says in ((junk, "is not an importance.json a prune stage wrote"),
                       (other, "was computed for another model (num_layers 32 != 4)")):
        f = _write(tmp_path, SCRATCH.replace("hidden_size = 32\n", f'hidden_size = 32\nimportance_from = "{path}"\n'),
                   _lines())
        err = _refused(tmp_path, f, capsys)
        assert f"prune[width].importance_from: {path} " in err and says in err, err


def test_a_junk_task_yaml_is_refused_and_a_real_one_passes(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    from _train_util import ROOT

    good = ROOT / "experiments" / "tasks" / "stdlib_lastword"
    f = _write(tmp_path, SCRATCH + f'[eval]\ntasks = ["{good}"]\n', _lines())
    assert main(["check", str(f)]) == 0
    (tmp_path / "junk.yaml").write_text("task: [unclosed\n")
    f = _write(tmp_path, SCRATCH + '[eval]\ntasks = ["junk.yaml"]\n', _lines())
    assert "junk.yaml is not a task YAML lm-eval can read" in _refused(tmp_path, f, capsys)
    (tmp_path / "junk.yaml").write_text("dataset_path: json\n")
    assert "junk.yaml is not a task YAML (no `task:` key)" in _refused(tmp_path, f, capsys)


@pytest.mark.slow  # lm-eval indexes its ~15,000 task names (seconds)
def test_an_unknown_lm_eval_task_is_refused_up_front(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    f = _write(tmp_path, SCRATCH + '[eval]\ntasks = ["hellaswagg"]\n', _lines())
    assert "eval.tasks: 'hellaswagg' is not an lm-eval task; did you mean 'hellaswag'?" in _refused(tmp_path, f, capsys)
