"""The training loop: run-directory output, LR schedule, resume keys, 2 processes == 1 process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_util import (
    FINETUNE,
    engine_env,
    experiment_toml,
    load_exp,
    prepared_exp,
    read_lines,
    run_inprocess,
)
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)


def test_finetune_from_scratch_writes_the_contract(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exp = prepared_exp(tmp_path, "ft", finetune=FINETUNE)
    run = tmp_path / "runs" / "ft"
    assert run_inprocess(exp, "finetune") == 0
    stage = run / "finetune"
    status = json.loads((stage / "status.json").read_text())
    assert status["state"] == "succeeded" and status["step"] == 12 and status["total_steps"] == 12
    lines = read_lines(stage / "metrics.jsonl")
    train = [r for r in lines if r["split"] == "train"]
    val = [r for r in lines if r["split"] == "val"]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert [r["step"] for r in val] == [0, 4, 8, 12]
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "gpu_mem_gb", "time"} <= train[0].keys()
    assert train[-1]["tokens"] == 12 * 8 * 32
    assert val[-1]["loss"] < val[0]["loss"] - 0.1
    assert train[0]["lr"] == pytest.approx(1.5e-3) and train[-1]["lr"] == pytest.approx(3e-4)
    assert list((stage / "tensorboard").glob("events.out.tfevents.*"))
    model = AutoModelForCausalLM.from_pretrained(stage / "model")
    assert model.config.num_hidden_layers == 4 and model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert AutoTokenizer.from_pretrained(stage / "model").eos_token == "[EOS]"
    assert not (stage / "checkpoints").exists()


def test_lr_schedule_warmup_then_cosine_to_min_lr() -> None:
    from engine.config import TrainConfig
    from engine.training.setup import lr_at

    cfg = TrainConfig(steps=10, lr=1.0, min_lr=0.1, warmup_steps=2, global_batch_size=4, micro_batch_size=4)
    lrs = [lr_at(s, cfg) for s in range(10)]
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    assert lrs[6] == pytest.approx(0.1 + 0.45 * (1 + torch.cos(torch.tensor(torch.pi * 4 / 7)).item()))


def test_resume_key_ignores_tunable_keys_only(tmp_path: Path) -> None:
    from engine.training.checkpoint import resume_key

    def key(extra: str, seq: int = 32) -> str:
        exp = load_exp(experiment_toml("k", tmp_path, finetune=FINETUNE + extra, seq=seq), tmp_path / "k.toml")
        return resume_key(exp, "finetune")

    base = key("")
    assert key("max_nan_steps = 9\n") == base
    assert key('optimizer_states = "bfloat16"\n') == base  # the moments are converted on load
    assert key("", seq=64) != base
    assert key("weight_decay = 0.0\n") != base
    exp = load_exp(experiment_toml("k", tmp_path, finetune=FINETUNE.replace("lr = 3e-3", "lr = 1e-3")),
                   tmp_path / "k.toml")
    assert resume_key(exp, "finetune") == base


def test_resume_key_ignores_tunable_keys_of_one_student_too(tmp_path: Path) -> None:
    """`[[prune]] distill = {steps = …}` is as resumable as [distill].steps; {loss = …} is not."""
    from engine.training.checkpoint import resume_key

    distill = "[distill]\nsteps = 10\nglobal_batch_size = 8\nmicro_batch_size = 4\n"

    def key(student: str = "") -> str:
        prune = f'[[prune]]\nname = "half"\nmethod = "depth"\ndrop_layers = [2, 3]\n{student}'
        text = experiment_toml("k", tmp_path, finetune=FINETUNE, prune=prune, distill=distill)
        return resume_key(load_exp(text, tmp_path / "k.toml"), "distill-half")

    base = key()
    assert key("distill = {steps = 25, lr = 1e-3, checkpoint_interval = 5}\n") == base
    assert key('distill = {loss = "ce"}\n') != base
    assert key('distill = {loss = "ce", steps = 25}\n') == key('distill = {loss = "ce"}\n')


@pytest.mark.slow
def test_two_processes_through_accelerate_match_one_process(tmp_path: Path) -> None:
    """Global batch 8: 1 process x 2 micro-batches of 4 == 2 processes (gloo) x 2 micro-batches of 2."""
    one = prepared_exp(tmp_path, "one", finetune=FINETUNE)
    assert run_inprocess(one, "finetune") == 0

    two_toml = tmp_path / "two.toml"
    prepared_exp(tmp_path, "two", finetune=FINETUNE.replace("micro_batch_size = 4", "micro_batch_size = 2"))
    env = engine_env()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "engine", "finetune", str(two_toml)]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 process(es), 2 micro-batch(es) of 2" in out.stdout

    def curve(name: str, split: str) -> list[float]:
        return [r["loss"] for r in read_lines(tmp_path / "runs" / name / "finetune" / "metrics.jsonl")
                if r["split"] == split]

    assert len(curve("two", "train")) == 12
    assert curve("two", "train") == pytest.approx(curve("one", "train"), rel=1e-4)
    assert curve("two", "val") == pytest.approx(curve("one", "val"), rel=1e-4)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "runs" / "one" / "finetune" / "model" / "model.safetensors")
    b = load_file(tmp_path / "runs" / "two" / "finetune" / "model" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)


def _reference_steps(model: torch.nn.Module, cfg, batches: list[torch.Tensor], clip: float) -> list[float]:
    """Stock clip_grad_norm_ then a plain for-loop AdamW with the engine's decay groups."""
    from engine.training.setup import make_optimizer

    groups = make_optimizer(model, cfg).param_groups
    opt = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups],
                            lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=1e-8, foreach=False)
    norms = []
    for batch in batches:
        logits = model(input_ids=batch[:, :-1]).logits
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        opt.zero_grad()
    return norms


@pytest.mark.parametrize("grad_clip", [0.05, 0.0])
def test_steps_clip_like_clip_grad_norm_then_adamw(grad_clip: float) -> None:
    """The Trainer leaves clipping to the fused AdamW step (grad_scale); two updates must equal
    stock clip_grad_norm_ followed by a plain AdamW, and differ from unclipped ones."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.config import TrainConfig
    from engine.distill.losses import LossSpec
    from engine.training.setup import make_accelerator
    from engine.training.step import Trainer

    cfg_model = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg_model)
    clipped, unclipped = copy.deepcopy(model), copy.deepcopy(model)
    cfg = TrainConfig(steps=10, lr=1e-2, min_lr=1e-3, warmup_steps=0, global_batch_size=2, micro_batch_size=2,
                      grad_clip=grad_clip)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 64, (2, 17), generator=gen) for _ in range(2)]
    trainer = Trainer(make_accelerator(), model, cfg, LossSpec("ce", chunk_tokens=8))
    results = [trainer.step([b], lr=cfg.lr) for b in batches]

    norms = _reference_steps(clipped, cfg, batches, grad_clip if grad_clip > 0 else float("inf"))
    _reference_steps(unclipped, cfg, batches, float("inf"))
    assert [r.grad_norm for r in results] == pytest.approx(norms, rel=1e-4)
    if grad_clip:
        assert min(norms) > 4 * grad_clip  # so clipping changes the update
    trained = dict(trainer.unwrapped().student.named_parameters())
    for name, p in clipped.named_parameters():
        torch.testing.assert_close(trained[name].detach(), p.detach(), rtol=1e-4, atol=2e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
    gap = max(float((trained[n] - p).abs().max()) for n, p in unclipped.named_parameters())
    assert (gap > 1e-3) == bool(grad_clip)


def test_gradient_checkpointing_gives_the_loss_of_the_plain_path() -> None:
    """gradient_checkpointing = true recomputes the layers in backward: on a tiny fp32 model, the same
    losses and weights as without it over a few steps (measured: identical on the CPU; tolerance 1e-6)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.config import TrainConfig
    from engine.distill.losses import LossSpec
    from engine.training.setup import make_accelerator
    from engine.training.step import Trainer

    cfg_model = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 64, (2, 17), generator=gen) for _ in range(8)]
    losses, weights = {}, {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg = TrainConfig(steps=10, lr=1e-2, min_lr=1e-3, warmup_steps=0, global_batch_size=4, micro_batch_size=2,
                          gradient_checkpointing=checkpointing)
        trainer = Trainer(make_accelerator(), LlamaForCausalLM(cfg_model), cfg, LossSpec("ce", chunk_tokens=8))
        student = trainer.unwrapped().student
        assert student.model.layers[0].gradient_checkpointing == checkpointing
        calls: list[int] = []  # a layer's modules run twice per micro-batch when checkpointed (forward, recompute)
        hook = student.model.layers[0].mlp.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        losses[checkpointing] = [trainer.step(batches[2 * i:2 * i + 2], lr=cfg.lr).loss for i in range(4)]
        hook.remove()
        assert len(calls) == 8 * (2 if checkpointing else 1)
        weights[checkpointing] = [p.detach() for p in student.parameters()]
    assert losses[True] == pytest.approx(losses[False], rel=1e-6, abs=0)
    for a, b in zip(weights[False], weights[True], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert losses[False][-1] != losses[False][0]  # the steps trained
