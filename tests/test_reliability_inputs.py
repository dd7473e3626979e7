"""Bad input caught before anything is written: `check` and `run` exit 2 with one line, and `run`
leaves the runs folder untouched. Torch-free (models and tokenizers are described by their files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.contract import RunLayout, StageStatus
from engine.stages import kind_of

SCRATCH = """
name = "rel"
[model]
init = "scratch"
dtype = "float32"
arch = {model_type = "llama", hidden_size = 64, intermediate_size = 128, num_hidden_layers = 4, num_attention_heads = 4, num_key_value_heads = 2}
tokenizer_train_vocab = 512
[data]
train_files = ["train.jsonl"]
seq_length = 32
[finetune]
steps = 2
global_batch_size = 4
micro_batch_size = 4
[[prune]]
name = "width"
method = "width"
hidden_size = 32
[distill]
steps = 2
global_batch_size = 4
micro_batch_size = 4
"""

PRETRAINED = """
name = "rel"
[model]
path = "{model}"
[data]
train_files = ["train.jsonl"]
seq_length = 32
"""


def _lines(n: int = 50) -> str:
    return "".join(json.dumps({"text": f"document {i} " * 20}) + "\n" for i in range(n))


def _tokenizer_dir(path: Path, vocab: int) -> Path:
    """A folder with a tokenizer.json whose ids reach vocab - 1 (what check reads; nothing loads it)."""
    path.mkdir(parents=True, exist_ok=True)
    doc = {"model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(vocab)}}, "added_tokens": []}
    (path / "tokenizer.json").write_text(json.dumps(doc))
    return path


def _model_dir(path: Path, vocab: int = 256, **config) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": "llama", "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, **config}
    (path / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    _tokenizer_dir(path, vocab)
    header = b'{"__metadata__":{}}'  # weights `check` reads the framing of: a safetensors file holding no tensor
    (path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def _write(tmp_path: Path, text: str, data: str | None = None) -> Path:
    f = tmp_path / "exp.toml"
    f.write_text(text)
    if data is not None:
        (tmp_path / "train.jsonl").write_text(data)
    return f


def _refused(tmp_path: Path, f: Path, capsys, *extra: str, run_only: tuple[str, ...] = ()) -> str:
    """`check` and `run` both exit 2 with one line, and `run` wrote nothing."""
    runs = tmp_path / "runs"
    before = sorted(p.relative_to(tmp_path) for p in runs.rglob("*")) if runs.exists() else None
    mtimes = {p: p.stat().st_mtime_ns for p in runs.rglob("*")} if runs.exists() else {}
    for cmd in ("check", "run"):
        assert main([cmd, str(f), "--runs-dir", str(runs), *extra, *(run_only if cmd == "run" else ())]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    after = sorted(p.relative_to(tmp_path) for p in runs.rglob("*")) if runs.exists() else None
    assert after == before, "run wrote before failing"
    assert mtimes == {p: p.stat().st_mtime_ns for p in runs.rglob("*")}, "run rewrote a file before failing"
    return err


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative data paths resolve here, never in the checkout
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


# ---- data files --------------------------------------------------------------------------------


def test_missing_data_file(tmp_path, capsys):
    err = _refused(tmp_path, _write(tmp_path, SCRATCH), capsys)
    assert "data.train_files: file not found: 'train.jsonl'" in err


def test_empty_data_file(tmp_path, capsys):
    assert "train.jsonl is empty" in _refused(tmp_path, _write(tmp_path, SCRATCH, ""), capsys)


def test_broken_jsonl_line(tmp_path, capsys):
    data = _lines(10) + '{"text": "unterminated\n' + _lines(3)
    assert "train.jsonl:11: not valid JSON" in _refused(tmp_path, _write(tmp_path, SCRATCH, data), capsys)


def test_wrong_text_field(tmp_path, capsys):
    f = _write(tmp_path, SCRATCH.replace("seq_length = 32", 'seq_length = 32\ntext_field = "body"'), _lines())
    err = _refused(tmp_path, f, capsys)
    assert "data.text_field: 'body' is not a field of" in err and "fields there: text" in err


# ---- model and tokenizer folders ---------------------------------------------------------------


def test_tokenizer_path_that_does_not_exist(tmp_path, capsys):
    text = SCRATCH.replace("tokenizer_train_vocab = 512", 'tokenizer = "./tok/nope"')
    err = _refused(tmp_path, _write(tmp_path, text, _lines()), capsys)
    assert "model.tokenizer: no such folder './tok/nope'" in err and "Repo id" not in err


def test_tokenizer_folder_without_a_tokenizer(tmp_path, capsys):
    (tmp_path / "tok").mkdir()
    text = SCRATCH.replace("tokenizer_train_vocab = 512", 'tokenizer = "tok"')
    assert "model.tokenizer: 'tok' holds no tokenizer" in _refused(tmp_path, _write(tmp_path, text, _lines()),
                                                                 capsys)


def test_model_folder_without_config_json(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"\0")
    err = _refused(tmp_path, _write(tmp_path, PRETRAINED.format(model="m"), _lines()), capsys)
    assert "model.path: 'm' has no config.json (it holds pytorch_model.bin)" in err


def test_model_config_without_model_type(tmp_path, capsys):
    _model_dir(tmp_path / "m", model_type=None)
    err = _refused(tmp_path, _write(tmp_path, PRETRAINED.format(model="m"), _lines()), capsys)
    assert "config.json has no model_type" in err and "'None'" not in err


def test_a_good_pretrained_folder_passes(tmp_path, capsys):
    _model_dir(tmp_path / "m")
    assert main(["check", str(_write(tmp_path, PRETRAINED.format(model="m"), _lines()))]) == 0


# ---- vocabulary and layer_map ------------------------------------------------------------------


def test_tokenizer_with_more_ids_than_the_scratch_vocab(tmp_path, capsys):
    _tokenizer_dir(tmp_path / "tok", 300)
    text = SCRATCH.replace("tokenizer_train_vocab = 512", 'tokenizer = "tok"').replace(
        'model_type = "llama",', 'model_type = "llama", vocab_size = 256,')
    err = _refused(tmp_path, _write(tmp_path, text, _lines()), capsys)
    assert "gives ids up to 299 but the model's vocab_size is 256" in err
    assert "raise model.arch.vocab_size to at least 300" in err


def test_other_tokenizer_with_more_ids_than_the_model(tmp_path, capsys):
    _model_dir(tmp_path / "m", vocab=256)
    _tokenizer_dir(tmp_path / "tok", 300)
    text = PRETRAINED.format(model="m").replace('path = "m"', 'path = "m"\ntokenizer = "tok"')
    err = _refused(tmp_path, _write(tmp_path, text, _lines()), capsys)
    assert "use the model's own tokenizer (leave model.tokenizer out)" in err


def test_bad_set_layer_map_keeps_finished_results(tmp_path, capsys):
    """`--set distill.layer_map=[[5,0]] --only distill-width` removed the finished model and rewrote
    experiment.toml before the stage found the pair out of range."""
    f = _write(tmp_path, SCRATCH, _lines())
    runs = tmp_path / "runs"
    from engine.config import load_experiment
    from engine.orchestration.run import write_experiment

    exp = load_experiment(f)
    exp.runs_dir = str(runs)
    layout = RunLayout(exp.run_dir)
    exp = write_experiment(exp, layout)
    for stage in exp.stages():
        st = StageStatus(layout.stage_dir(stage), stage, exp.stage_hash(stage))
        st.start()
        st.finish("succeeded")
        out = layout.stage_dir(stage) / kind_of(stage).output  # meta.json, model/config.json
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")
        if out.name == "config.json":  # a model folder holds weights too (a finished stage is checked for them)
            (out.parent / "model.safetensors").write_bytes(b"\x02" + b"\x00" * 7 + b"{}")
    capsys.readouterr()
    err = _refused(tmp_path, f, capsys, "--set", "distill.layer_map=[[5,0]]", "--set", "distill.hidden_weight=1",
                   run_only=("--only", "distill-width"))
    assert "distill.layer_map: [5, 0] is out of range for distill-width (student layers 0..3" in err
    assert (layout.stage_dir("distill-width") / "model" / "config.json").exists()


# ---- run directory and names -------------------------------------------------------------------


def test_runs_dir_that_is_a_file(tmp_path, capsys):
    f = _write(tmp_path, SCRATCH, _lines())
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(f), "--runs-dir", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err
    assert (tmp_path / "afile").read_text() == "x"


def test_a_300_character_run_name(tmp_path, capsys):
    f = _write(tmp_path, SCRATCH.replace('name = "rel"', f'name = "{"r" * 300}"'), _lines())
    assert "is 300 characters long; keep a run name to 100 characters at most" in _refused(tmp_path, f, capsys)
    assert not (tmp_path / "runs").exists()
