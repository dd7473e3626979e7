"""Distillation end to end on a toy task: KD beats CE at matching the teacher; eval results."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _train_util import (
    experiment_toml,
    load_exp,
    make_tokenizer,
    prepared_exp,
    read_lines,
    run_inprocess,
    write_depth_student,
)
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)

TEACHER_FT = """
[finetune]
steps = 40
global_batch_size = 32
micro_batch_size = 16
lr = 1e-2
min_lr = 1e-3
warmup_steps = 2
val_interval = 20
val_batches = 2
checkpoint_interval = 1000
seed = 7
"""
PRUNE = '[[prune]]\nname = "half"\nmethod = "depth"\ndrop_layers = [2, 3]\n'


def distill_section(loss: str, extra: str = "") -> str:
    return f"""
[distill]
steps = 15
global_batch_size = 32
micro_batch_size = 16
lr = 5e-3
min_lr = 5e-4
warmup_steps = 1
val_interval = 5
val_batches = 2
checkpoint_interval = 100
loss = "{loss}"
chunk_tokens = 48
seed = 3
{extra}
"""


def _clone_run(src: Path, dst: Path) -> None:
    for part in ("prepare", "finetune/model", "prune-half/model"):
        shutil.copytree(src / part, dst / part)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    return make_teacher_run(tmp_path_factory.mktemp("kd"))


def make_teacher_run(root: Path) -> Path:
    """A trained teacher and its depth-pruned student in a run directory under `root`."""
    exp = prepared_exp(root, "base", finetune=TEACHER_FT, prune=PRUNE)
    run = root / "runs" / "base"
    assert run_inprocess(exp, "finetune") == 0
    write_depth_student(run / "finetune" / "model", run / "prune-half" / "model", keep=[0, 1])
    return run


def _val_windows(run: Path, n: int = 16) -> torch.Tensor:
    from engine.data import PackedDataset

    ds = PackedDataset(run / "prepare", "validation", 32)
    return torch.from_numpy(np.stack([ds[k] for k in range(n)]))


def _kl_to_teacher(run: Path, student_dir: Path) -> float:
    from transformers import AutoModelForCausalLM

    x = _val_windows(run)[:, :-1]
    t = AutoModelForCausalLM.from_pretrained(run / "finetune" / "model").eval()
    s = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    with torch.no_grad():
        lt, ls = F.log_softmax(t(x).logits, -1), F.log_softmax(s(x).logits, -1)
    return float((lt.exp() * (lt - ls)).sum(-1).mean())


def _run_distill(teacher_run: Path, name: str, section: str, tmp: Path) -> Path:
    run = teacher_run.parent / name
    _clone_run(teacher_run, run)
    text = experiment_toml(name, teacher_run.parent, finetune=TEACHER_FT, prune=PRUNE, distill=section)
    exp = load_exp(text, tmp / f"{name}.toml")
    assert run_inprocess(exp, "distill-half") == 0
    return run


def test_distillation_lowers_val_loss_and_matches_teacher_better_than_ce(teacher_run: Path, tmp_path: Path) -> None:
    kd = _run_distill(teacher_run, "kd", distill_section("forward_kl", "temperature = 1.0"), tmp_path)
    ce = _run_distill(teacher_run, "ce", distill_section("ce"), tmp_path)
    kd_val = [r["loss"] for r in read_lines(kd / "distill-half" / "metrics.jsonl") if r["split"] == "val"]
    assert len(kd_val) == 4 and kd_val[-1] < kd_val[0] - 0.02  # a few distill steps lower the val loss
    train = [r for r in read_lines(kd / "distill-half" / "metrics.jsonl") if r["split"] == "train"]
    assert {"loss", "kd_loss", "ce_loss", "lr", "grad_norm", "tokens", "tokens_per_s"} <= train[-1].keys()
    kl_start = _kl_to_teacher(teacher_run, teacher_run / "prune-half" / "model")
    kl_kd = _kl_to_teacher(teacher_run, kd / "distill-half" / "model")
    kl_ce = _kl_to_teacher(teacher_run, ce / "distill-half" / "model")
    assert kl_kd < kl_start
    assert kl_kd < 0.8 * kl_ce, (kl_kd, kl_ce)


def test_hidden_state_loss_with_projection_top_k_and_padded_vocab(teacher_run: Path, tmp_path: Path) -> None:
    """A narrower student (hidden 32 vs 48) whose vocabulary is padded to 64 rows (teacher: 47)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    run = teacher_run.parent / "hid"
    _clone_run(teacher_run, run)
    shutil.rmtree(run / "prune-half" / "model")
    cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                               max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(run / "prune-half" / "model")
    AutoTokenizer.from_pretrained(teacher_run / "finetune" / "model").save_pretrained(run / "prune-half" / "model")
    section = distill_section("jsd", "temperature = 2.0\ntop_k = 8\nce_weight = 0.2\nhidden_weight = 1.0\n"
                                     "hidden_loss = \"cosine\"\nlayer_map = [[1, 3], [0, 1]]")
    text = experiment_toml("hid", teacher_run.parent, finetune=TEACHER_FT, prune=PRUNE, distill=section)
    assert run_inprocess(load_exp(text, tmp_path / "hid.toml"), "distill-half") == 0
    train = [r for r in read_lines(run / "distill-half" / "metrics.jsonl") if r["split"] == "train"]
    assert train[-1]["hidden_loss"] < train[0]["hidden_loss"]
    assert train[-1]["kd_loss"] < train[0]["kd_loss"]
    out = AutoModelForCausalLM.from_pretrained(run / "distill-half" / "model")
    assert out.config.hidden_size == 32 and out.config.vocab_size == 64  # projections are not saved
    assert not any("projection" in k for k in out.state_dict())


def test_distill_refuses_a_student_with_another_tokenizer(teacher_run: Path, tmp_path: Path, capsys) -> None:
    run = teacher_run.parent / "tok"
    _clone_run(teacher_run, run)
    make_tokenizer(run / "prune-half" / "model", words=[f"v{i}" for i in range(45)])
    text = experiment_toml("tok", teacher_run.parent, finetune=TEACHER_FT, prune=PRUNE,
                           distill=distill_section("forward_kl"))
    assert run_inprocess(load_exp(text, tmp_path / "tok.toml"), "distill-half") == 2
    err = capsys.readouterr().err
    assert "different tokenizer" in err and "prune-half" in err
    status = json.loads((run / "distill-half" / "status.json").read_text())
    assert status["state"] == "failed"
    assert not (run / "distill-half" / "model").exists()


def test_distill_without_student_and_bad_layer_map(teacher_run: Path, tmp_path: Path, capsys) -> None:
    run = teacher_run.parent / "nostudent"
    shutil.copytree(teacher_run / "prepare", run / "prepare")
    shutil.copytree(teacher_run / "finetune" / "model", run / "finetune" / "model")
    text = experiment_toml("nostudent", teacher_run.parent, finetune=TEACHER_FT, prune=PRUNE,
                           distill=distill_section("forward_kl"))
    assert run_inprocess(load_exp(text, tmp_path / "n.toml"), "distill-half") == 2
    assert "run the prune-half stage first" in capsys.readouterr().err

    run = teacher_run.parent / "badmap"
    _clone_run(teacher_run, run)
    text = experiment_toml("badmap", teacher_run.parent, finetune=TEACHER_FT, prune=PRUNE,
                           distill=distill_section("forward_kl", "hidden_weight = 1.0\nlayer_map = [[5, 1]]"))
    assert run_inprocess(load_exp(text, tmp_path / "b.toml"), "distill-half") == 2
    assert "distill.layer_map: [5, 1] is out of range" in capsys.readouterr().err


def test_eval_stage_results_and_evaluate_loss(teacher_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from engine.evaluation.loss import evaluate_loss

    # evaluate_loss == the loss transformers computes from full logits
    model = AutoModelForCausalLM.from_pretrained(teacher_run / "finetune" / "model").eval()
    x = _val_windows(teacher_run, 8)
    with torch.no_grad():
        logits = model(x[:, :-1]).logits
    ref = float(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()))
    got = evaluate_loss(model, [x[:4], x[4:]], batches=None, micro_batch_size=4)
    assert got == pytest.approx(ref, rel=1e-5)
    assert evaluate_loss(model, [x[:4].numpy(), x[4:].numpy()], batches=1) == pytest.approx(
        float(F.cross_entropy(logits[:4].flatten(0, 1), x[:4, 1:].flatten())), rel=1e-5)

    run = teacher_run.parent / "ev"
    _clone_run(teacher_run, run)
    shutil.copytree(run / "prune-half" / "model", run / "distill-half" / "model")
    eval_ = '[eval]\nsplits = ["validation", "test"]\nbatches = 3\nmicro_batch_size = 2\nspeed_max_seconds = 1\n'
    text = experiment_toml("ev", teacher_run.parent, finetune=TEACHER_FT, prune=PRUNE,
                           distill=distill_section("forward_kl"), eval_=eval_)
    assert run_inprocess(load_exp(text, tmp_path / "ev.toml"), "eval") == 0
    res = json.loads((run / "eval" / "results.json").read_text())
    assert list(res["models"]) == ["teacher", "prune-half", "distill-half"]
    teacher = res["models"]["teacher"]
    assert teacher["params"] == sum(p.numel() for p in model.parameters())
    assert res["models"]["prune-half"]["params"] < teacher["params"]
    for entry in res["models"].values():
        assert set(entry["splits"]) == {"validation", "test"}
        for s in entry["splits"].values():
            assert s["perplexity"] == pytest.approx(math.exp(s["loss"]))
            assert s["tokens"] == 3 * 2 * 32
    assert teacher["splits"]["validation"]["loss"] < res["models"]["prune-half"]["splits"]["validation"]["loss"]



def test_raising_one_students_steps_resumes_from_its_checkpoint(teacher_run: Path, tmp_path: Path) -> None:
    """A per-student `[[prune]] distill = {steps = …}` raised after a stop resumes that student's
    checkpoint, as a raised [distill].steps does (it used to throw the checkpoint away)."""
    import os
    import signal

    from engine.contract.checkpoints import list_checkpoints
    from engine.training.step import Trainer

    run = teacher_run.parent / "more"
    _clone_run(teacher_run, run)
    section = distill_section("forward_kl").replace("checkpoint_interval = 100", "checkpoint_interval = 2")
    micro_per_step = 2  # global_batch_size 32 = 2 micro-batches of 16

    def exp_with(steps: int):
        prune = PRUNE + f"distill = {{steps = {steps}}}\n"
        text = experiment_toml("more", teacher_run.parent, finetune=TEACHER_FT, prune=prune, distill=section)
        return load_exp(text, tmp_path / "more.toml")

    forwards: list[int] = []  # one entry per training forward of the student
    sigterm_at = 2 * micro_per_step + 1  # the first micro-batch of step 3

    def count(module, _inputs, output):
        if module.training:
            forwards.append(1)
            if len(forwards) == sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)  # what `cancel` sends; the loop saves and stops
        return output

    orig = Trainer.__init__

    def patched(self, accelerator, student, *a, **kw):
        student.get_input_embeddings().register_forward_hook(count)
        orig(self, accelerator, student, *a, **kw)

    Trainer.__init__ = patched
    try:
        assert run_inprocess(exp_with(8), "distill-half") == 130
        found = list_checkpoints(run / "distill-half" / "checkpoints")
        assert found, "the cancelled run left no checkpoint"
        stopped = found[-1][0]
        assert 2 < stopped < 8
        forwards.clear()
        sigterm_at = -1
        assert run_inprocess(exp_with(12), "distill-half") == 0
    finally:
        Trainer.__init__ = orig
    assert len(forwards) == (12 - stopped) * micro_per_step, f"restarted instead of resuming from step {stopped}"
    stage = run / "distill-half"
    assert [r["step"] for r in read_lines(stage / "metrics.jsonl") if r["split"] == "train"] == list(range(1, 13))
    assert json.loads((stage / "status.json").read_text())["step"] == 12
    assert (stage / "model" / "config.json").exists()
