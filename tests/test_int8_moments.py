"""optimizer_states = "int8": Adam moments in 8 bits (torchao's block-wise quantization) inside MasterAdamW.
The update is the fp32/bf16 one; only how the moments are stored changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)

from engine.config import ConfigError, loads_experiment
from engine.config.extras import Extra
from engine.training import int8_moments
from engine.training.master_adamw import MasterAdamW
from tests.test_master_adamw import KW, _groups, _markov_batches, _pair, _tiny_trainer

pytest.importorskip("torchao")

BIG, SMALL = (64, 128), (128,)  # 8192 values: 8-bit moments; 128 (a norm): bf16 moments


def test_quantization_keeps_each_value_near_its_level() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=gen) * torch.logspace(-6, 0, 4096)  # values over six decades
    for signed, values in ((True, x), (False, x.abs())):
        codes, scale = int8_moments.quantize(values, signed)
        assert codes.dtype == torch.uint8 and scale.numel() == values.numel() // int8_moments.BLOCK
        back = int8_moments.dequantize(codes, scale, signed)
        block_max = values.abs().view(-1, int8_moments.BLOCK).amax(1).repeat_interleave(int8_moments.BLOCK)
        # the dynamic map's levels are dense near zero: each value lands within 1/64 of its block's max
        # (measured: 0.0070 signed, 0.0035 unsigned) and never changes sign
        assert ((back - values).abs() <= block_max / 64).all()
        assert (back * values >= 0).all()


@pytest.mark.parametrize("master", [True, False])
def test_int8_moments_follow_fp32_moments_in_a_quarter_of_the_bytes(master: bool) -> None:
    """Large tensors keep codes and scales (2.03 bytes a parameter for both moments), small ones bf16
    moments; six steps of lr 1e-2 with clipping and a skipped step move the weights as fp32 moments do,
    to within the moments' rounding."""
    shapes = [BIG, SMALL]
    _, mine = _pair(shapes)
    _, wide = _pair(shapes)
    dtype = torch.bfloat16 if master else None
    int8 = MasterAdamW(_groups(mine), dtype=dtype, state_dtype=torch.int8, **KW)
    fp32 = MasterAdamW(_groups(wide), dtype=dtype, **KW)
    big, small = (int8.state[p] for p in mine)
    assert sorted(big) == sorted(["step", "exp_avg_codes", "exp_avg_scale", "exp_avg_sq_codes", "exp_avg_sq_scale"]
                                 + (["master"] if master else []))
    assert small["exp_avg"].dtype == small["exp_avg_sq"].dtype == torch.bfloat16
    stored = sum(big[k].nbytes for k in big if k.startswith("exp_avg"))
    assert stored == 2 * (64 * 128) * (1 + 4 / 256)  # codes + one fp32 scale per 256 values
    gen = torch.Generator().manual_seed(4)
    for i in range(6):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for opt, params in ((int8, mine), (fp32, wide)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.to(p.dtype)
            opt.grad_scale = torch.tensor(1.5)
            opt.found_inf = torch.tensor(float(i == 3))
            before = {k: v.clone() for k, v in big.items()}
            opt.step()
        if i == 3:  # skipped: the codes, scales and step stay as they were
            assert all(torch.equal(before[k], big[k]) for k in big)
    assert float(big["step"]) == 5.0
    for m, w in zip(mine, wide, strict=True):
        gap = (int8.master_weights()[m].float() - fp32.master_weights()[w].float()).abs().max()
        # the weights moved by up to 5e-2; 8-bit moments change that by < 3e-3 (measured 1.3e-3, 1.4e-3)
        assert 0 < gap < 3e-3, gap


@pytest.mark.parametrize("saved, loaded", [("int8", "float32"), ("float32", "int8"), ("int8", "int8")])
def test_a_checkpoint_converts_between_int8_and_float_moments(saved: str, loaded: str) -> None:
    """optimizer_states may change on resume (RESUMABLE_CHANGES): 8-bit moments load as their fp32
    values, fp32 ones are quantized, and int8 -> int8 keeps the codes as they are."""
    names = {"int8": torch.int8, "float32": torch.float32}
    _, a = _pair([BIG, SMALL])
    _, b = _pair([BIG, SMALL])
    first = MasterAdamW(_groups(a), state_dtype=names[saved], **KW)
    gen = torch.Generator().manual_seed(5)
    for p in a:
        p.grad = torch.randn(p.shape, generator=gen).bfloat16()
    first.step()
    second = MasterAdamW(_groups(b), state_dtype=names[loaded], **KW)
    second.load_state_dict(first.state_dict())
    src, dst = first.state[a[0]], second.state[b[0]]
    for key, signed in int8_moments.SIGNED.items():
        if saved == "int8":
            values = int8_moments.dequantize(src[f"{key}_codes"], src[f"{key}_scale"], signed)
        else:
            values = src[key].view(-1)
        if loaded == "int8" and saved == "int8":  # not quantized again (that could move a signed block)
            assert torch.equal(dst[f"{key}_codes"], src[f"{key}_codes"])
            assert torch.equal(dst[f"{key}_scale"], src[f"{key}_scale"])
        elif loaded == "int8":
            assert torch.equal(dst[f"{key}_codes"], int8_moments.quantize(values, signed)[0])
        else:
            assert dst[key].dtype == torch.float32 and torch.equal(dst[key].view(-1), values)
    assert second.state[b[1]]["exp_avg"].dtype == (torch.bfloat16 if loaded == "int8" else torch.float32)


# the largest loss difference, int8 against fp32 moments, over 12 steps of a tiny model whose matrices
# are large enough to be quantized (measured: 3.1e-3 with fp32 weights, 1.2e-2 with bf16 ones and fp32
# masters; the loss falls by 0.48 and 0.38 meanwhile)
LOSS_TOLERANCE = 2e-2


def _wide_trainer(master: bool, states: str):
    """_tiny_trainer with matrices of 64 x 128 (8-bit moments; its 32-wide ones are below MIN_NUMEL)."""
    return _tiny_trainer(master, optimizer_states=states, hidden=64, ffn=128)


@pytest.mark.parametrize("master", [True, False])
def test_int8_moments_give_the_loss_curve_of_fp32_moments_and_resume_exactly(tmp_path: Path, master: bool) -> None:
    """A real Trainer (2 micro-batches a step): the loss curve of fp32 moments within LOSS_TOLERANCE; a
    checkpoint keeps the codes (uint8) and a resumed trainer continues bit for bit."""
    from engine.training.checkpoint import load_checkpoint, save_checkpoint

    data = _markov_batches(24)
    curves = {}
    for states in ("float32", "int8"):
        trainer = _wide_trainer(master, states)
        curves[states] = [trainer.step(data[2 * i:2 * i + 2], lr=1e-2).loss for i in range(6)]
    assert ("8-bit Adam moments" in trainer.precision)
    opt = trainer._master()
    assert any(int8_moments.quantized_state(st) for st in opt.state.values())
    path = save_checkpoint(trainer.accelerator, tmp_path / "ckpt", 6, {"resume_key": "k"})
    saved = torch.load(path / "optimizer.bin", weights_only=True)["state"]
    assert {st["exp_avg_codes"].dtype for st in saved.values() if "exp_avg_codes" in st} == {torch.uint8}
    resumed = _wide_trainer(master, "int8")
    assert load_checkpoint(resumed.accelerator, path)["step"] == 6
    for i in range(6, 12):
        loss = trainer.step(data[2 * i:2 * i + 2], lr=1e-2).loss
        assert resumed.step(data[2 * i:2 * i + 2], lr=1e-2).loss == loss
        curves["int8"].append(loss)
    fp32 = _wide_trainer(master, "float32")
    curves["float32"] = [fp32.step(data[2 * i:2 * i + 2], lr=1e-2).loss for i in range(12)]
    ref, got = curves["float32"], curves["int8"]
    assert ref[0] == got[0] and ref[-1] < ref[0] - 0.3 and got[-1] < got[0] - 0.3
    assert max(abs(a - b) for a, b in zip(ref, got, strict=True)) < LOSS_TOLERANCE
    assert ref != got  # the setting took effect


BASE = 'name = "t"\n[model]\npath = "some/model"\n[data]\ndataset = "wikitext"\nconfig = "wikitext-103-v1"\n'


def test_int8_is_refused_without_torchao_and_under_fsdp(monkeypatch: pytest.MonkeyPatch) -> None:
    text = BASE + '[finetune]\noptimizer_states = "int8"\n'
    assert loads_experiment(text, source="exp.toml").finetune.optimizer_states == "int8"
    with pytest.raises(ConfigError, match='strategy = "fsdp"'):
        loads_experiment(text + '[launch]\ngpus = [0, 1]\nstrategy = "fsdp"\n', source="exp.toml")
    monkeypatch.setattr(Extra, "installed_version", lambda self: None)
    with pytest.raises(ConfigError, match=r'torchao is not installed; pip install "slimlab\[int8\]", or set '
                                          r'optimizer_states = "bfloat16"'):
        loads_experiment(text, source="exp.toml")
    monkeypatch.setattr(Extra, "installed_version", lambda self: "0.10.0")
    with pytest.raises(ConfigError, match="torchao 0.10.0 is older than 0.14.0"):
        loads_experiment(text, source="exp.toml")


def test_a_torchao_that_does_not_import_stops_the_optimizer_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed but broken (the schema reads only its metadata): the optimizer is refused before training
    with the error and the fix, not at the first step with a traceback."""
    import builtins

    from engine.errors import UserError

    real_import = builtins.__import__

    def broken(name: str, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError("undefined symbol: _ZN3c10")
        return real_import(name, *args, **kwargs)

    int8_moments._quant_utils.cache_clear()
    monkeypatch.setattr(builtins, "__import__", broken)
    try:
        with pytest.raises(UserError, match=r'torchao does not import here \(ImportError: undefined symbol: '
                                            r'_ZN3c10\); pip install -U "slimlab\[int8\]", or set '
                                            r'optimizer_states = "bfloat16"'):
            MasterAdamW(_groups(_pair([BIG, SMALL])[1]), state_dtype=torch.int8, **KW)
    finally:
        monkeypatch.undo()
        int8_moments._quant_utils.cache_clear()
    assert MasterAdamW(_groups(_pair([BIG, SMALL])[1]), state_dtype=torch.int8, **KW).state_dtype == torch.int8
