"""gradient_checkpointing = a fraction of the layers: the first ones recomputed, the rest keeping their
activations (engine/training/recompute.py), and the memory model that prices it."""

from __future__ import annotations

import pytest
import torch

from engine.config import ConfigError, TrainConfig
from engine.config.schema import checkpointed_layers
from engine.config.shape import shape_from_config
from engine.distill.objective import decoder_layers
from engine.resources.memory import activation_bytes, layer_activation_bytes
from engine.training.recompute import checkpoint_layers
from tests.test_resources import ARCHS, _model, saved_activation_bytes


def test_the_setting_takes_true_false_or_a_fraction_and_refuses_the_rest():
    assert [checkpointed_layers(s, 8) for s in (False, True, 0.5, 0.25, 0.01, 1.0)] == [0, 8, 4, 2, 1, 8]
    assert TrainConfig(steps=1, gradient_checkpointing=0.5).gradient_checkpointing == 0.5
    for bad in (0, 1.5, -0.5, "yes", "0.5"):
        with pytest.raises((ConfigError, ValueError)) as e:
            TrainConfig(steps=1, gradient_checkpointing=bad)
        assert "fraction of the layers in (0, 1]" in str(e.value)


def test_the_first_layers_are_checkpointed_and_the_gradients_do_not_change():
    arch = ARCHS[0]  # 4 layers
    plain, half = _model(arch, torch.float32), _model(arch, torch.float32)
    assert checkpoint_layers(half, 0.5) == 2
    assert [layer.gradient_checkpointing for layer in decoder_layers(half)] == [True, True, False, False]
    batch = torch.randint(0, arch["vocab_size"], (2, 32))
    for m in (plain, half):
        m.train()
        m(batch, labels=batch).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), half.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("setting", [0.25, 0.5, 0.75])
def test_the_activation_model_prices_the_layers_that_keep_their_activations(setting):
    """Autograd's saved tensors with some layers checkpointed against the model, within 3%: the
    uncheckpointed layers' activations, the final norm and the checkpointed layers' inputs, of which the
    first (the embeddings' output) is held by the checkpoint outside autograd's hooks."""
    arch = ARCHS[0]
    m = _model(arch, torch.float32)
    m.train()
    c = checkpoint_layers(m, setting)
    batch, seq = 2, 128
    measured = saved_activation_bytes(m, arch["vocab_size"], batch, seq)
    s = shape_from_config(arch)
    tokens = batch * seq
    embeddings_out = tokens * 4 * s.hidden_size
    predicted = activation_bytes(s, tokens, 4, setting, fp32_residual=False)
    assert predicted == pytest.approx(measured + embeddings_out, rel=0.03)
    # below none checkpointed, by one layer's activations less its input per checkpointed layer (with
    # every layer but the last checkpointed it is below all of them: the last one's activations are freed
    # before any recompute, and one recompute is saved)
    none = activation_bytes(s, tokens, 4, False, False)
    assert predicted < none
    assert none - predicted == c * tokens * (layer_activation_bytes(s, 4, False) - 4 * s.hidden_size)


@pytest.mark.parametrize("fits", [0.1, 0.5, 0.7])
def test_check_offers_the_fewest_recomputed_layers_that_fit(tmp_path, monkeypatch, fits):
    """On a GPU between what `fits` and the next smaller fraction need, the refusal names `fits` (not
    true: every recomputed layer costs speed), and with it set the same check passes. (bf16 moments and
    stochastic rounding are set already: with them left to choose, check takes them first.)"""
    from engine.config import load_experiment
    from engine.resources import fit
    from engine.resources.plan import experiment_shapes, stage_need
    from tests.test_resources import _big_toml

    monkeypatch.setattr(fit, "free_bytes", lambda _p: 2**50)
    formats = 'optimizer_states = "bfloat16"\nmaster_weights = "stochastic"'
    exp = load_experiment(_big_toml(tmp_path, hidden=1024, layers=10, extra=formats))
    shapes = experiment_shapes(exp)

    def need(setting):
        exp.finetune.gradient_checkpointing = setting
        return stage_need(exp, shapes, "finetune", 1, True).total

    below = {0.1: False, 0.5: 0.4, 0.7: 0.6}[fits]
    ok, too_much = need(fits), need(below)
    assert ok < too_much
    exp.finetune.gradient_checkpointing = False
    machine = fit.Machine(gpus=1, gpu_bytes=(ok + too_much) // 2 + fit.GPU_RESERVED, gpu_name="GPU",
                          host_bytes=100 * 2**30)
    with pytest.raises(ConfigError) as e:
        fit.resource_lines(exp, machine)
    assert f"set finetune.gradient_checkpointing = {fits} (~" in str(e.value)
    exp.finetune.gradient_checkpointing = fits
    assert any("finetune" in line for line in fit.resource_lines(exp, machine))


def test_check_takes_the_memory_formats_before_more_recompute(tmp_path, monkeypatch):
    """Where 0.5 of the layers recomputed would fit and so would bf16 moments with stochastic rounding
    and no recompute, check names the formats: they cost no speed on an H100 (benchmarks/RESULTS.md),
    every recomputed layer does. Where nothing without recompute fits, the least recompute comes with them."""
    from engine.config import load_experiment
    from engine.resources import fit
    from engine.resources.plan import experiment_shapes, stage_need
    from tests.test_resources import _big_toml

    monkeypatch.setattr(fit, "free_bytes", lambda _p: 2**50)
    exp = load_experiment(_big_toml(tmp_path, hidden=1024, layers=10))
    shapes = experiment_shapes(exp)

    def need(gc, states="float32", master=True):
        exp.finetune.gradient_checkpointing, exp.finetune.optimizer_states = gc, states
        exp.finetune.master_weights = master
        return stage_need(exp, shapes, "finetune", 1, True).total

    plain, half, formats = need(False), need(0.5), need(False, "bfloat16", "stochastic")
    need(False)
    limit = max(half, formats)
    assert limit < plain
    machine = fit.Machine(gpus=1, gpu_bytes=limit + fit.GPU_RESERVED, gpu_name="GPU", host_bytes=100 * 2**30)
    with pytest.raises(ConfigError) as e:
        fit.resource_lines(exp, machine)
    assert "optimizer_states" in str(e.value) and "gradient_checkpointing" not in str(e.value)

    tight = min(formats, half) - 2**20  # neither alone fits: the least recompute with the formats
    least = next(f / 10 for f in range(1, 10) if need(f / 10, "bfloat16", "stochastic") < tight)
    assert least <= 0.5 and need(least, "bfloat16") >= tight  # (the formats are both needed there)
    need(False)
    machine = fit.Machine(gpus=1, gpu_bytes=tight + fit.GPU_RESERVED, gpu_name="GPU", host_bytes=100 * 2**30)
    with pytest.raises(ConfigError) as e:
        fit.resource_lines(exp, machine)
    assert f"set finetune.gradient_checkpointing = {least} and finetune.optimizer_states" in str(e.value)
