"""micro_batch_size = "auto": which sizes the search tries, what it picks under an injected memory
limit (SLIMLAB_AUTO_BATCH_FIT, engine/training/micro_batch.py), and that the run it picks equals the
run with that size set by hand (the probe leaves weights, gradients and random state untouched)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _train_util import FINETUNE, prepared_exp, read_lines, run_inprocess
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)

from engine.config.micro_batch import fixed_micro_batch
from engine.config.schema import TrainConfig
from engine.training.micro_batch import FIT_ENV, candidates

AUTO = FINETUNE.replace("micro_batch_size = 4", 'micro_batch_size = "auto"')
BY_HAND_2 = FINETUNE.replace("micro_batch_size = 4", "micro_batch_size = 2")


def test_candidates_halve_through_divisors_of_the_per_process_batch() -> None:
    assert candidates(8) == [8, 4, 2, 1]
    assert candidates(96) == [96, 48, 24, 12, 6, 3, 1]
    assert candidates(10) == [10, 5, 2, 1]
    assert candidates(1) == [1]


def test_auto_without_a_search_is_the_largest_divisor_up_to_4() -> None:
    assert TrainConfig().micro_batch_size == "auto"
    assert fixed_micro_batch(TrainConfig(global_batch_size=128)) == 4
    assert fixed_micro_batch(TrainConfig(global_batch_size=6)) == 3
    assert fixed_micro_batch(TrainConfig(global_batch_size=10)) == 2
    assert fixed_micro_batch(TrainConfig(global_batch_size=8), world=4) == 2
    assert fixed_micro_batch(TrainConfig(global_batch_size=8, micro_batch_size=8)) == 8


def _train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_lines(run / "finetune" / "metrics.jsonl") if r["split"] == "train"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "finetune" / "model" / "model.safetensors")


def test_auto_picks_what_fits_and_trains_as_that_size_set_by_hand(tmp_path: Path, monkeypatch, capsys) -> None:
    hand = prepared_exp(tmp_path, "hand", finetune=BY_HAND_2)
    assert run_inprocess(hand, "finetune") == 0

    monkeypatch.setenv(FIT_ENV, "2")  # a "device" that fits 2 sequences: 8 and 4 fail, 2 fits
    auto = prepared_exp(tmp_path, "auto", finetune=AUTO)
    capsys.readouterr()
    assert run_inprocess(auto, "finetune") == 0
    out = capsys.readouterr().out
    assert "micro_batch_size auto: 2 (8, 4 did not fit)" in out
    assert "4 micro-batch(es) of 2 each" in out  # global_batch_size 8 kept through accumulation
    status = json.loads((tmp_path / "runs" / "auto" / "finetune" / "status.json").read_text())
    assert status["micro_batch_size"] == 2

    assert _train_losses(tmp_path / "runs" / "auto") == pytest.approx(_train_losses(tmp_path / "runs" / "hand"),
                                                                      rel=1e-6, abs=1e-7)
    a, b = _weights(tmp_path / "runs" / "auto"), _weights(tmp_path / "runs" / "hand")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_auto_resumes_with_the_size_its_checkpoint_recorded(tmp_path: Path, monkeypatch, capsys) -> None:
    from engine.training.loop import TrainingRecipe

    hand = prepared_exp(tmp_path, "hand", finetune=BY_HAND_2)
    assert run_inprocess(hand, "finetune") == 0

    auto = prepared_exp(tmp_path, "auto", finetune=AUTO)
    with monkeypatch.context() as m:  # first attempt: picks 2, dies before model/ (checkpoint at step 8 kept)
        m.setenv(FIT_ENV, "2")

        def die(self: TrainingRecipe) -> None:
            raise RuntimeError("killed before finishing")

        m.setattr(TrainingRecipe, "finish", die)
        assert run_inprocess(auto, "finetune") != 0
    from engine.contract.checkpoints import latest_checkpoint
    from engine.training.checkpoint import checkpoint_state

    step, path = latest_checkpoint(tmp_path / "runs" / "auto" / "finetune" / "checkpoints")
    assert checkpoint_state(path)["micro_batch_size"] == 2 and step == 8

    capsys.readouterr()  # second attempt without the limit: on the CPU "auto" alone would be 4
    assert run_inprocess(auto, "finetune") == 0
    out = capsys.readouterr().out
    assert "micro_batch_size auto: 2, as in the checkpoint at step 8" in out and "resumed from" in out
    a, b = _weights(tmp_path / "runs" / "auto"), _weights(tmp_path / "runs" / "hand")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def _trainer(monkeypatch, master: bool):
    """A distilling Trainer on the CPU whose "auto" search runs (SLIMLAB_AUTO_BATCH_FIT=2), with master weights
    applying as on one CUDA GPU (`master`: the predicate the engine reads; the update is MasterAdamW's torch
    reference here); and the dtypes the student's first projection saw in each forward."""
    from _prune_util import tiny_model
    from accelerate import Accelerator

    import engine.training.step as step
    from engine.config import DistillConfig
    from engine.training.stage_bodies import loss_spec
    from engine.training.step import Trainer

    monkeypatch.setenv(FIT_ENV, "2")
    monkeypatch.setattr(step, "master_weights_apply", lambda *_: master)
    teacher = tiny_model("llama", layers=2, seed=1)
    student = tiny_model("llama", layers=2)
    seen: list[torch.dtype] = []
    student.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, *_: seen.append(m.weight.dtype))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = DistillConfig(steps=2, global_batch_size=4, micro_batch_size="auto", lr=1e-3, warmup_steps=0)
    trainer = Trainer(Accelerator(cpu=True), student, cfg, loss_spec(cfg, teacher.config.vocab_size), teacher,
                      seq_length=16)
    return trainer, seen, before


def test_the_search_tries_bf16_copies_where_master_weights_will_train(monkeypatch) -> None:
    """Master weights train bf16 parameters, which MasterAdamW casts only after the search: the tries run bf16
    copies (an fp32 try under autocast holds more than the step it sizes: at SmolLM2's shape on an H100 the
    stage peaked at 24.0 GiB in the try, 18.5 with bf16 copies), and give the fp32 parameters back untouched."""
    trainer, seen, before = _trainer(monkeypatch, master=True)
    assert trainer.micro == 2 and trainer.master
    assert seen == [torch.bfloat16]  # the try of 2 (the injected limit refuses 4 before its forward)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # (accelerate's wrapper)
    masters = {id(p): s["master"] for p, s in optimizer.state.items()}
    student = trainer.unwrapped().student
    for name, p in student.named_parameters():  # the masters are the fp32 weights from before the search
        assert torch.equal(masters[id(p)], before[name]), name
    vocab = student.config.vocab_size
    assert trainer.step([torch.randint(0, vocab, (4, 17))], 1e-3).loss > 0  # and it trains


def test_without_master_weights_the_search_tries_the_fp32_parameters(monkeypatch) -> None:
    trainer, seen, before = _trainer(monkeypatch, master=False)
    assert trainer.micro == 2 and not trainer.master
    assert set(seen) == {torch.float32}
    for name, p in trainer.unwrapped().student.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p.detach(), before[name]), name
