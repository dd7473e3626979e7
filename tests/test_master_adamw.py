"""MasterAdamW: bf16 parameters, fp32 master weights and moments, the same update as torch's AdamW."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)

from engine.training.master_adamw import MasterAdamW
from tests.test_stochastic_rounding import _neighbours

KW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)


def _pair(shapes, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ref = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    mine = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    return ref, mine


def _groups(params):
    return [{"params": params[:-1], "weight_decay": 0.1}, {"params": params[-1:], "weight_decay": 0.0}]


def _one_of_its_neighbours(p: torch.Tensor, master: torch.Tensor) -> bool:
    """Each bf16 value of `p` is one of the two bf16 numbers around its fp32 master."""
    low, high = _neighbours(master)
    got = p.detach().float().view(torch.int32)
    return bool(((got == low) | (got == high)).all())


@pytest.mark.parametrize("round_copies", [True, False])
def test_update_equals_fused_adamw_with_clipping_and_a_skipped_step(round_copies: bool) -> None:
    shapes = [(40, 24), (7, 3, 5), (24,)]
    ref, mine = _pair(shapes)
    fused = torch.optim.AdamW(_groups(ref), fused=True, **KW)
    master = MasterAdamW(_groups(mine), round_copies=round_copies, **KW)
    assert all(p.dtype == torch.bfloat16 for p in mine)
    gen = torch.Generator().manual_seed(1)
    for i in range(5):
        grads = [torch.randn(s, generator=gen).bfloat16() for s in shapes]
        for r, m, g in zip(ref, mine, grads, strict=True):
            r.grad, m.grad = g.float(), g
        fused.grad_scale = master.grad_scale = torch.tensor(1.0 + i)
        fused.found_inf = master.found_inf = torch.tensor(float(i == 2))  # step 3 is skipped
        fused.step()
        master.step()
    masters = master.master_weights()
    for r, p in zip(ref, mine, strict=True):
        torch.testing.assert_close(masters[p], r.detach(), rtol=0, atol=2e-6)
        if round_copies:  # the parameter is its master rounded stochastically: one of its two neighbours
            assert _one_of_its_neighbours(p, masters[p])
            assert not torch.equal(p, masters[p].bfloat16())
        else:
            assert torch.equal(p, masters[p].bfloat16())  # rounded to nearest
    assert [float(master.state[p]["step"]) for p in mine] == [4.0] * 3


def test_accumulate_sums_micro_batches_in_fp32() -> None:
    ref, mine = _pair([(64, 32), (32,)])
    plain = torch.optim.AdamW(_groups(ref), foreach=False, **KW)
    master = MasterAdamW(_groups(mine), **KW)
    gen = torch.Generator().manual_seed(2)
    micro = [[torch.randn(p.shape, generator=gen).bfloat16() * (1 + 100 * k) for p in ref] for k in range(4)]
    for grads in micro:
        for p, g in zip(mine, grads, strict=True):
            p.grad = g.clone()
        master.accumulate()
        assert all(p.grad is None for p in mine)
    fp32_sums = [sum(g[i].float() for g in micro) for i in range(len(ref))]
    bf16_sums = [sum(g[i] for g in micro) for i in range(len(ref))]
    assert any(not torch.equal(a.float(), b) for a, b in zip(bf16_sums, fp32_sums, strict=True))
    for got, want in zip(master.gradients(), fp32_sums, strict=True):
        assert got.dtype == torch.float32 and torch.equal(got, want)
    for r, g in zip(ref, fp32_sums, strict=True):
        r.grad = g
    plain.step()
    master.step()
    for r, p in zip(ref, mine, strict=True):
        torch.testing.assert_close(master.master_weights()[p], r.detach(), rtol=0, atol=2e-6)
    for p in mine:  # the next step starts new sums
        p.grad = torch.ones_like(p)
    master.accumulate()
    assert all(torch.equal(g, torch.ones_like(g)) for g in master.gradients())


def test_state_dict_keeps_fp32_state_and_resumes_exactly() -> None:
    shapes = [(16, 8), (8,)]
    _, a = _pair(shapes)
    _, b = _pair(shapes)
    opt_a = MasterAdamW(_groups(a), **KW)
    gen = torch.Generator().manual_seed(3)
    grads = [[torch.randn(s, generator=gen).bfloat16() for s in shapes] for _ in range(4)]

    def step(opt, params, gs):
        for p, g in zip(params, gs, strict=True):
            p.grad = g
        opt.step()

    for gs in grads[:2]:
        step(opt_a, a, gs)
    saved = copy.deepcopy(opt_a.state_dict())
    with torch.no_grad():
        for p, q in zip(a, b, strict=True):
            p_master = opt_a.master_weights()[p]
            q.copy_(p_master)  # a fresh model that loaded the saved (fp32) weights
    opt_b = MasterAdamW(_groups(b), **KW)
    opt_b.load_state_dict(saved)
    assert {t.dtype for st in opt_b.state.values() for t in st.values()} == {torch.float32}
    for gs in grads[2:]:
        step(opt_a, a, gs)
        step(opt_b, b, gs)
    for p, q in zip(a, b, strict=True):
        assert torch.equal(opt_a.master_weights()[p], opt_b.master_weights()[q]) and torch.equal(p, q)


def test_refuses_half_parameters_and_a_state_of_another_model() -> None:
    with pytest.raises(ValueError, match="fp32 parameters"):
        MasterAdamW([torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))])
    opt = MasterAdamW([torch.nn.Parameter(torch.zeros(3))])
    other = MasterAdamW([torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="does not match"):
        opt.load_state_dict(other.state_dict())


def test_master_weights_apply_where_gradients_never_add_up_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from engine.training.setup import master_weights_apply

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "triton" else None)

    def acc(device="cuda", mp="bf16", fsdp=False, procs=1):
        return SimpleNamespace(device=torch.device(device), mixed_precision=mp, is_fsdp2=fsdp, num_processes=procs)

    assert master_weights_apply(acc(), 1) and master_weights_apply(acc(), 8)
    assert master_weights_apply(acc(procs=2), 1)
    assert not master_weights_apply(acc(procs=2), 4)  # DDP would sum micro-batches in bf16
    assert not master_weights_apply(acc(fsdp=True, procs=2), 1)
    assert not master_weights_apply(acc(mp="fp16"), 1)
    assert not master_weights_apply(acc(device="cpu", mp="no"), 1)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert not master_weights_apply(acc(), 1)  # no Triton: no update kernel


def _tiny_trainer(master: bool, accum: int = 2, hidden: int = 32, ffn: int = 64, **train):
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.config import TrainConfig
    from engine.distill.losses import LossSpec
    from engine.training.setup import make_accelerator
    from engine.training.step import Trainer

    cfg_model = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
    torch.manual_seed(0)
    cfg = TrainConfig(steps=10, lr=1e-2, min_lr=1e-3, warmup_steps=0, global_batch_size=2 * accum,
                      micro_batch_size=2, **train)
    return Trainer(make_accelerator(), LlamaForCausalLM(cfg_model), cfg, LossSpec("ce", chunk_tokens=8),
                   master_weights=master)


def _batches(n: int, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (2, 17), generator=gen) for _ in range(n)]


def test_trainer_with_master_weights_learns_saves_fp32_and_resumes(tmp_path: Path) -> None:
    trainer = _tiny_trainer(master=True)
    student = trainer.unwrapped().student
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
    assert trainer.precision == "bf16 weights rounded stochastically from fp32 master weights in the optimizer"
    assert _tiny_trainer(master=False).precision == "float32 weights"  # CPU: no mixed precision
    data = _batches(2)
    first = trainer.step(data, lr=1e-2)
    for _ in range(6):
        last = trainer.step(data, lr=1e-2)
    assert last.loss < first.loss - 0.3 and last.finite
    state = trainer.full_student_state()
    masters = trainer._master().master_weights()
    for name, p in student.named_parameters():
        assert state[name].dtype == torch.float32 and torch.equal(state[name], masters[p])
        assert _one_of_its_neighbours(p, masters[p])  # the forward's weight: its master rounded stochastically
    assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])  # still tied

    trainer.accelerator.save_state(str(tmp_path / "ckpt"), safe_serialization=True)
    resumed = _tiny_trainer(master=True)
    resumed.accelerator.load_state(str(tmp_path / "ckpt"))
    more = _batches(4, seed=5)
    for a, b in zip(more[::2], more[1::2], strict=True):
        assert trainer.step([a, b], lr=5e-3).loss == resumed.step([a, b], lr=5e-3).loss
    for (name, p), q in zip(student.named_parameters(), resumed.unwrapped().student.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("saved_master", [True, False])
def test_resume_across_precision_modes_keeps_the_weights(tmp_path: Path, saved_master: bool) -> None:
    """A checkpoint written with master weights resumed by plain AdamW (and the other way round,
    as when the number of GPUs changes): training continues from the saved weights at fp32."""
    first = _tiny_trainer(master=saved_master)
    for batch in _batches(2):
        first.step([batch, batch], lr=1e-2)
    if saved_master:
        want = {n: first._master().master_weights()[p].clone()
                for n, p in first.unwrapped().student.named_parameters()}
    else:
        want = {n: p.detach().clone() for n, p in first.unwrapped().student.named_parameters()}
    first.accelerator.save_state(str(tmp_path / "ckpt"), safe_serialization=True)

    other = _tiny_trainer(master=not saved_master)
    other.accelerator.load_state(str(tmp_path / "ckpt"))
    other.adopt_loaded_masters()
    params = dict(other.unwrapped().student.named_parameters())
    if saved_master:  # plain AdamW: fp32 parameters = the saved masters, exactly
        for name, w in want.items():
            assert params[name].dtype == torch.float32 and torch.equal(params[name], w), name
    else:  # master weights from the saved fp32 weights, via the bf16 parameters
        masters = other._master().master_weights()
        for name, w in want.items():
            assert torch.equal(masters[params[name]], w.bfloat16().float()), name
    result = other.step(_batches(2, seed=7), lr=1e-2)
    assert result.finite


# ---- optimizer_states = "bfloat16" ---------------------------------------------------------


def _moment_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(st[k].nbytes for st in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))


@pytest.mark.parametrize("master", [True, False])
def test_bf16_moments_take_half_the_bytes_and_follow_fp32_moments(master: bool) -> None:
    """`state_dtype=bfloat16` stores both moments in bf16 (half the bytes) and moves the weights like
    fp32 moments to within their rounding; `dtype=None` (fp32 parameters, their own masters) with fp32
    moments is torch's fused AdamW."""
    shapes = [(40, 24), (24,)]
    ref, mine = _pair(shapes)
    _, wide = _pair(shapes)
    dtype = torch.bfloat16 if master else None
    fused = torch.optim.AdamW(_groups(ref), fused=True, **KW)
    bf16 = MasterAdamW(_groups(mine), dtype=dtype, state_dtype=torch.bfloat16, **KW)
    fp32 = MasterAdamW(_groups(wide), dtype=dtype, **KW)
    assert all(("master" in st) == master for st in bf16.state.values())
    assert {p.dtype for p in mine} == {torch.bfloat16 if master else torch.float32}
    assert {st[k].dtype for st in bf16.state.values() for k in ("exp_avg", "exp_avg_sq")} == {torch.bfloat16}
    assert _moment_bytes(bf16) * 2 == _moment_bytes(fp32) == 8 * sum(p.numel() for p in ref)
    gen = torch.Generator().manual_seed(4)
    for _ in range(6):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for r, m, w, g in zip(ref, mine, wide, grads, strict=True):
            r.grad, m.grad, w.grad = g, g.to(m.dtype), g.to(w.dtype)
        for opt in (fused, bf16, fp32):
            opt.step()
    for r, m, w in zip(ref, mine, wide, strict=True):
        if not master:  # fp32 moments, no master copy: torch's AdamW exactly
            torch.testing.assert_close(fp32.master_weights()[w], r.detach(), rtol=0, atol=2e-6)
        # 6 steps of lr 1e-2 move each weight by up to 6e-2; bf16 moments change that by < 1e-3
        gap = (bf16.master_weights()[m] - fp32.master_weights()[w]).abs().max()
        assert 0 < gap < 1e-3, gap


def _markov_batches(n: int, seed: int = 1) -> list[torch.Tensor]:
    """Micro-batches [2, 17] of a Markov chain over 45 tokens: a tiny model learns it within a few steps."""
    from _train_util import markov_tokens

    return list(torch.from_numpy(markov_tokens(n * 2 * 17, 47, seed)).view(n, 2, 17))


# the largest loss difference, bf16 against fp32 moments, over 12 steps (measured: 4.8e-3 with bf16
# weights and fp32 masters, 3.7e-4 with fp32 weights; the loss falls by ~0.47 meanwhile)
LOSS_TOLERANCE = 1e-2


@pytest.mark.parametrize("master", [True, False])
def test_bf16_moments_give_the_loss_curve_of_fp32_moments(master: bool) -> None:
    """Real training of a tiny model (2 micro-batches a step): the same loss curve within
    LOSS_TOLERANCE, through MasterAdamW with masters (bf16 weights) and without (fp32 weights)."""
    curves = {}
    for states in ("float32", "bfloat16"):
        trainer = _tiny_trainer(master, optimizer_states=states)
        opt = trainer._master() if master or states == "bfloat16" else None
        if opt is not None:
            moments = {st[k].dtype for st in opt.state.values() for k in ("exp_avg", "exp_avg_sq")}
            assert moments == {torch.bfloat16 if states == "bfloat16" else torch.float32}
            assert isinstance(opt, MasterAdamW) and opt.has_masters == master
        else:
            assert type(trainer._master()) is torch.optim.AdamW  # fp32 moments, no master: torch's own
        assert ("bf16 Adam moments" in trainer.precision) == (states == "bfloat16")
        data = _markov_batches(24)
        curves[states] = [trainer.step(data[2 * i:2 * i + 2], lr=1e-2).loss for i in range(12)]
    fp32, bf16 = curves["float32"], curves["bfloat16"]
    assert fp32[-1] < fp32[0] - 0.3 and bf16[-1] < bf16[0] - 0.3
    assert fp32[0] == bf16[0]  # the same model and data: only the moments differ
    assert max(abs(a - b) for a, b in zip(fp32, bf16, strict=True)) < LOSS_TOLERANCE
    assert fp32 != bf16  # the setting took effect


@pytest.mark.parametrize("master", [True, False])
def test_checkpoint_with_bf16_moments_resumes_bit_identically(tmp_path: Path, master: bool) -> None:
    """The engine's checkpoint (save_checkpoint / load_checkpoint) keeps the bf16 moments as they are
    (and no more bytes than they take): a resumed trainer continues exactly like the one that saved."""
    from engine.training.checkpoint import checkpoint_bytes, load_checkpoint, save_checkpoint

    data = _markov_batches(16)
    first = _tiny_trainer(master, optimizer_states="bfloat16")
    for i in range(3):
        first.step(data[2 * i:2 * i + 2], lr=1e-2)
    narrow = checkpoint_bytes(first.accelerator)
    path = save_checkpoint(first.accelerator, tmp_path / "ckpt", 3, {"resume_key": "k"})
    saved = torch.load(path / "optimizer.bin", weights_only=True)["state"]
    assert {st[k].dtype for st in saved.values() for k in ("exp_avg", "exp_avg_sq")} == {torch.bfloat16}
    wide = _tiny_trainer(master, optimizer_states="float32")
    wide.step(data[:2], lr=1e-2)
    n = sum(p.numel() for p in first.params)
    assert checkpoint_bytes(wide.accelerator) - narrow == 4 * n  # the moments: 8 -> 4 bytes a parameter

    resumed = _tiny_trainer(master, optimizer_states="bfloat16")
    assert load_checkpoint(resumed.accelerator, path)["step"] == 3
    for i in range(3, 8):
        assert first.step(data[2 * i:2 * i + 2], lr=5e-3).loss == resumed.step(data[2 * i:2 * i + 2], lr=5e-3).loss
    a, b = first._master(), resumed._master()
    for p, q in zip(first.params, resumed.params, strict=True):
        assert torch.equal(p, q) and torch.equal(a.master_weights()[p], b.master_weights()[q])
        for key in ("exp_avg", "exp_avg_sq"):
            assert b.state[q][key].dtype == torch.bfloat16 and torch.equal(a.state[p][key], b.state[q][key])


@pytest.mark.parametrize("master", [True, False])
def test_changing_optimizer_states_on_resume_converts_the_moments(tmp_path: Path, master: bool) -> None:
    """optimizer_states is a resumable change (engine/training/checkpoint.py RESUMABLE_CHANGES): the
    saved moments take the new dtype on load, fp32 -> bf16 rounded to nearest, bf16 -> fp32 exactly
    (also into torch's AdamW, the plain path with fp32 moments), and training goes on from the weights."""
    data = _markov_batches(8)
    for saved_states, new_states in (("float32", "bfloat16"), ("bfloat16", "float32")):
        first = _tiny_trainer(master, optimizer_states=saved_states)
        for i in range(2):
            first.step(data[2 * i:2 * i + 2], lr=1e-2)
        ckpt = tmp_path / f"{saved_states}-{master}"
        first.accelerator.save_state(str(ckpt), safe_serialization=True)
        other = _tiny_trainer(master, optimizer_states=new_states)
        other.accelerator.load_state(str(ckpt))
        other.adopt_loaded_masters()
        want = torch.bfloat16 if new_states == "bfloat16" else torch.float32
        a, b = first._master(), other._master()
        for p, q in zip(first.params, other.params, strict=True):
            assert torch.equal(p, q)
            for key in ("exp_avg", "exp_avg_sq"):
                got = b.state[q][key]
                assert got.dtype == want and torch.equal(got, a.state[p][key].to(want))
        assert other.step(data[4:6], lr=1e-2).finite


@pytest.mark.parametrize("states", ["bfloat16", "int8"])
def test_finetune_stage_with_narrow_moments_cancels_and_resumes_like_an_uninterrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, states: str) -> None:
    """The stage end to end from the experiment file (CPU: fp32 weights, MasterAdamW without masters):
    stopped by SIGTERM after step 3, it saves a checkpoint holding bf16 (or 8-bit) moments, and the rerun
    resumes from it to the same final weights, bit for bit, as a run never stopped."""
    if states == "int8":
        pytest.importorskip("torchao")
    import os
    import signal

    from _train_util import FINETUNE, prepared_exp, run_inprocess
    from safetensors.torch import load_file

    from engine.training.loop import TrainingRecipe

    text = FINETUNE.replace("steps = 12", "steps = 8") + f'optimizer_states = "{states}"\n'
    assert run_inprocess(prepared_exp(tmp_path, "ref", finetune=text), "finetune") == 0
    exp = prepared_exp(tmp_path, "run", finetune=text)
    stage = tmp_path / "runs" / "run" / "finetune"
    after_step = TrainingRecipe.after_step

    def stop_once(self: TrainingRecipe) -> None:
        after_step(self)
        if self.state.step == 3 and not (stage / "checkpoints").exists():
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler: finish the step, save, cancel

    monkeypatch.setattr(TrainingRecipe, "after_step", stop_once)
    assert run_inprocess(exp, "finetune") == 130
    (ckpt,) = (stage / "checkpoints").iterdir()
    moments = torch.load(ckpt / "optimizer.bin", weights_only=True)["state"]
    dtypes = {v.dtype for st in moments.values() for k, v in st.items() if k.startswith("exp_avg")}
    assert dtypes == ({torch.bfloat16} if states == "bfloat16" else {torch.uint8, torch.float32, torch.bfloat16})
    label = {"bfloat16": "bf16", "int8": "8-bit"}[states]
    assert f"float32 weights, {label} Adam moments" in capsys.readouterr().out
    monkeypatch.setattr(TrainingRecipe, "after_step", after_step)
    assert run_inprocess(exp, "finetune") == 0
    assert f"resumed from {ckpt}" in capsys.readouterr().out
    want = load_file(tmp_path / "runs" / "ref" / "finetune" / "model" / "model.safetensors")
    got = load_file(stage / "model" / "model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
