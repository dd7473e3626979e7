"""The prune stage end to end on a tiny teacher: run-directory contract, reload, reuse of importance."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
from _prune_util import tiny_model, write_prepared
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from engine.config import loads_experiment
from engine.contract import RunLayout, read_metrics, read_status
from engine.evaluation.loss import evaluate_loss
from engine.models.hf import count_parameters, save_model
from engine.orchestration.stage_process import run_stage
from engine.prune.stage_body import prune_stage

WORDS = "the quick brown fox jumps over a lazy dog while seven tiny models learn to count".split()


def _tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    text = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    tok.train_from_iterator(text, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune-stage")
    tok = _tokenizer()
    teacher = tiny_model("llama", layers=4, vocab_size=len(tok), tie_word_embeddings=False)
    with torch.no_grad():  # layer 2 adds nothing: lm-loss selection must find it
        teacher.model.layers[2].self_attn.o_proj.weight.zero_()
        teacher.model.layers[2].mlp.down_proj.weight.zero_()
    save_model(teacher, root / "teacher", tok)

    write_prepared(root / "runs" / "t" / "prepare", len(tok), 16)

    exp = loads_experiment(f"""
name = "t"
runs_dir = "{root / 'runs'}"
[model]
path = "{root / 'teacher'}"
dtype = "float32"
[data]
dataset = "builtin:stdlib-docs"
seq_length = 16
[eval]
batches = 2
micro_batch_size = 3
[[prune]]
name = "depth"
method = "depth"
num_layers = 3
selection = "lm-loss"
calibration_samples = 10
calibration_batch_size = 4
[[prune]]
name = "width"
method = "width"
ffn_hidden_size = 24
hidden_size = 16
num_key_value_heads = 1
importance_from = "depth"
""", source="t.toml")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = {s: run_stage(exp, s, prune_stage) for s in ("prune-depth", "prune-width")}
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return exp, RunLayout(exp.run_dir), teacher, codes


def test_depth_stage_writes_the_contract(run):
    exp, layout, teacher, codes = run
    assert codes["prune-depth"] == 0
    assert read_status(layout.stage_status_file("prune-depth"))["state"] == "succeeded"
    imp = json.loads(layout.importance_file("prune-depth").read_text())
    lm = imp["layers"]["lm_loss_increase"]
    assert imp["calibration"]["samples"] == 10 and len(lm) == 4 and abs(lm[2]) < 1e-5
    student = AutoModelForCausalLM.from_pretrained(layout.model_dir("prune-depth"), dtype=torch.float32)
    assert student.config.num_hidden_layers == 3
    # the dropped layer is the one whose removal raised the loss least
    dropped = min(range(4), key=lambda i: lm[i])
    kept = [i for i in range(4) if i != dropped]
    for new, old in enumerate(kept):
        torch.testing.assert_close(student.model.layers[new].mlp.up_proj.weight,
                                   teacher.model.layers[old].mlp.up_proj.weight, rtol=0, atol=0)
    assert (layout.model_dir("prune-depth") / "tokenizer.json").exists()

    records, _ = read_metrics(layout.metrics_file("prune-depth"))
    assert len(records) == 1 and records[0]["step"] == 0 and records[0]["split"] == "val"
    assert records[0]["params"] == count_parameters(student)
    from engine.data import PackedDataset

    val = PackedDataset(layout.data_dir, "validation", 16, seed=0)
    assert records[0]["loss"] == pytest.approx(evaluate_loss(student, val, 2, 3), rel=1e-5)


def test_width_stage_reuses_importance(run):
    exp, layout, teacher, codes = run
    assert codes["prune-width"] == 0
    imp = json.loads(layout.importance_file("prune-width").read_text())
    assert imp["calibration"]["reused_from"].endswith("prune-depth/importance.json")
    depth_imp = json.loads(layout.importance_file("prune-depth").read_text())
    assert imp["mlp_neurons"] == depth_imp["mlp_neurons"]
    student = AutoModelForCausalLM.from_pretrained(layout.model_dir("prune-width"), dtype=torch.float32)
    c = student.config
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == \
        (16, 24, 2, 1, 8)
    # the kept neurons of layer 0 are the 24 best by the reused scores
    best = sorted(np.argsort(depth_imp["mlp_neurons"][0])[::-1][:24].tolist())
    hidden = sorted(np.argsort(depth_imp["hidden_channels"])[::-1][:16].tolist())
    want = teacher.model.layers[0].mlp.down_proj.weight[hidden][:, best]
    torch.testing.assert_close(student.model.layers[0].mlp.down_proj.weight, want, rtol=0, atol=0)


def _prune_depth_keeping_signals(exp) -> int:
    """run_stage installs SIGTERM/SIGINT handlers; put pytest's back afterwards."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return run_stage(exp, "prune-depth", prune_stage)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def test_bad_target_fails_before_loading_weights(run, tmp_path, capsys):
    exp, layout, _, _ = run
    bad = exp.model_copy(deep=True)
    bad.runs_dir = str(tmp_path)
    bad.prune[0].num_layers = 9
    assert _prune_depth_keeping_signals(bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "num_layers: 9 is larger than the teacher's 4 layers" in err
    assert not (tmp_path / "t" / "prune-depth" / "model").exists()


def test_missing_fine_tuned_teacher_names_the_stage_to_run_first(run, tmp_path, capsys):
    from engine.config import FinetuneConfig

    exp, _, _, _ = run
    bad = exp.model_copy(deep=True)
    bad.runs_dir = str(tmp_path)
    bad.finetune = FinetuneConfig()  # the teacher is now <run>/finetune/model, not written yet
    assert _prune_depth_keeping_signals(bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: prune-depth: no fine-tuned teacher at ")
    assert err.endswith("run the finetune stage first")


def test_reinit_gives_the_same_shape_with_fresh_weights(run):
    exp, layout, teacher, _ = run
    scratch = exp.model_copy(deep=True)
    scratch.prune[1].name = "scratch"
    scratch.prune[1].reinit = True
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert run_stage(scratch, "prune-scratch", prune_stage) == 0
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    pruned = AutoModelForCausalLM.from_pretrained(layout.model_dir("prune-width"), dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_pretrained(layout.model_dir("prune-scratch"), dtype=torch.float32)
    assert fresh.config.to_dict()["hidden_size"] == pruned.config.hidden_size
    assert count_parameters(fresh) == count_parameters(pruned)
    assert not torch.equal(fresh.model.layers[0].mlp.down_proj.weight, pruned.model.layers[0].mlp.down_proj.weight)
    loss = read_metrics(layout.metrics_file("prune-scratch"))[0][0]["loss"]
    pruned_loss = read_metrics(layout.metrics_file("prune-width"))[0][0]["loss"]
    assert loss != pruned_loss
