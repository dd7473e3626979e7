"""Importance from calibration finds planted structure; scores round-trip through importance.json."""

from __future__ import annotations

import pytest
import torch
from _prune_util import logits, tiny_model, tokens

from engine.config import PruneConfig
from engine.config.shape import student_shape
from engine.errors import UserError
from engine.models.adapter import Arch
from engine.prune.depth import prune_depth, select_layers
from engine.prune.importance import Importance, calibrate, load_importance, random_importance
from engine.prune.width import prune_width, select_heads, select_width

BATCHES = [tokens(2, 11, seed=s) for s in range(3)]


def _width(**targets) -> PruneConfig:
    return PruneConfig(name="w", method="width", **targets)


def _prune(model, imp, **targets):
    t = Arch(model).shape
    plan = student_shape(t, _width(**targets), "x")
    sel = select_width(imp, t, plan.shape)
    return sel, prune_width(model, sel, plan.shape)


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_planted_mlp_neurons_are_kept(model_type):
    model = tiny_model(model_type)
    f = model.config.intermediate_size
    chosen = [[1, 5, 17, 30], [0, 2, 33, 39], [9, 10, 11, 25]]
    with torch.no_grad():
        for layer, idx in zip(model.model.layers, chosen, strict=True):
            layer.mlp.up_proj.weight[idx] *= 25.0  # these neurons feed down_proj far more
    sel, student = _prune(model, calibrate(model, BATCHES), ffn_hidden_size=4)
    assert [s.tolist() for s in sel.ffn] == chosen
    for i, idx in enumerate(chosen):
        torch.testing.assert_close(student.model.layers[i].mlp.down_proj.weight,
                                   model.model.layers[i].mlp.down_proj.weight[:, idx], rtol=0, atol=0)
    assert student.config.intermediate_size == 4 < f


def test_planted_heads_are_kept_mha():
    model = tiny_model("llama", num_key_value_heads=4)  # MHA: every head has its own values
    hd = Arch(model).shape.head_dim
    chosen = [[0, 3], [1, 2], [2, 3]]
    with torch.no_grad():
        for layer, heads in zip(model.model.layers, chosen, strict=True):
            for h in heads:
                layer.self_attn.v_proj.weight[h * hd:(h + 1) * hd] *= 25.0
    sel, student = _prune(model, calibrate(model, BATCHES), num_attention_heads=2)
    assert [s.tolist() for s in sel.heads] == chosen
    assert student.config.num_key_value_heads == 2  # MHA stays MHA
    rows = [r for h in chosen[0] for r in range(h * hd, (h + 1) * hd)]
    torch.testing.assert_close(student.model.layers[0].self_attn.q_proj.weight,
                               model.model.layers[0].self_attn.q_proj.weight[rows], rtol=0, atol=0)


def test_planted_kv_group_keeps_its_query_heads_gqa():
    model = tiny_model("qwen2")  # 4 heads in 2 KV groups of 2
    hd = Arch(model).shape.head_dim
    groups = [1, 0, 1]
    with torch.no_grad():
        for layer, g in zip(model.model.layers, groups, strict=True):
            layer.self_attn.v_proj.weight[g * hd:(g + 1) * hd] *= 25.0
            layer.self_attn.v_proj.bias[g * hd:(g + 1) * hd] *= 25.0
    sel, student = _prune(model, calibrate(model, BATCHES), num_key_value_heads=1)
    assert [s.tolist() for s in sel.kv] == [[g] for g in groups]
    assert [s.tolist() for s in sel.heads] == [[2 * g, 2 * g + 1] for g in groups]
    assert (student.config.num_attention_heads, student.config.num_key_value_heads) == (2, 1)
    torch.testing.assert_close(student.model.layers[0].self_attn.k_proj.bias,
                               model.model.layers[0].self_attn.k_proj.bias[hd:2 * hd], rtol=0, atol=0)


def test_select_heads_keeps_the_same_number_per_group():
    # 8 heads in 4 groups of 2; keep 2 groups with one head each
    scores = torch.tensor([0.1, 0.2, 5.0, 0.3, 0.4, 4.0, 0.0, 0.05])
    heads, groups = select_heads(scores, num_kv=4, keep_kv=2, keep_heads=2)
    assert groups.tolist() == [1, 2]  # group sums 5.3 and 4.4 beat 0.3 and 0.05
    assert heads.tolist() == [2, 5]


def test_planted_hidden_channels_are_kept():
    model = tiny_model("mistral")
    chosen = [0, 2, 3, 7, 11, 12, 19, 20, 23, 26, 30, 31]  # 12 = head_dim
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[chosen] *= 25.0
            layer.post_attention_layernorm.weight[chosen] *= 25.0
    sel, student = _prune(model, calibrate(model, BATCHES), hidden_size=len(chosen))
    assert sel.hidden.tolist() == chosen
    torch.testing.assert_close(student.model.embed_tokens.weight, model.model.embed_tokens.weight[:, chosen],
                               rtol=0, atol=0)
    torch.testing.assert_close(student.lm_head.weight, model.lm_head.weight[:, chosen], rtol=0, atol=0)


def _identity(layer) -> None:
    """Zero what a layer adds to the residual stream: the layer becomes the identity."""
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_identity_layer_is_dropped_by_block_influence(model_type):
    model = tiny_model(model_type, layers=4)
    _identity(model.model.layers[2])
    imp = calibrate(model, BATCHES, lm_loss=True)
    assert imp.block_influence[2] < 1e-5 < float(imp.block_influence[[0, 1, 3]].min())
    assert abs(float(imp.lm_loss[2])) < 1e-5  # skipping an identity changes no logit
    assert float(imp.lm_loss[[0, 1, 3]].abs().min()) > 1e-4
    drop = select_layers(imp, 4, 1, "block-influence")
    assert drop == [2]
    student = prune_depth(model, drop)
    ids = tokens(seed=9)
    torch.testing.assert_close(logits(student, ids), logits(model, ids), rtol=1e-5, atol=1e-5)


def test_contiguous_block_by_angular_distance():
    model = tiny_model("qwen3", layers=5)
    _identity(model.model.layers[2])
    _identity(model.model.layers[3])
    imp = calibrate(model, BATCHES)
    assert imp.angular is not None and imp.angular.shape == (6, 6)
    assert float(imp.angular[2, 4]) < 1e-3  # the hidden state before layer 2 is the one before layer 4
    assert select_layers(imp, 5, 2, "contiguous") == [2, 3]
    assert select_layers(imp, 5, 2, "last") == [3, 4]


def test_lm_loss_selection_drops_the_smallest_increase():
    imp = random_importance(Arch(tiny_model("llama")).shape, seed=0)
    imp.lm_loss = torch.tensor([0.5, -0.1, 0.2])
    assert select_layers(imp, 3, 1, "lm-loss") == [1]
    assert select_layers(imp, 3, 2, "lm-loss") == [1, 2]
    imp.lm_loss = None
    with pytest.raises(UserError, match="lm-loss"):
        select_layers(imp, 3, 1, "lm-loss")


def test_aggregations_match_their_definitions():
    model = tiny_model("llama")
    x = []  # what enters down_proj of layer 0, one [batch, seq, ffn] tensor per batch
    h = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, args: x.append(args[0].abs()))
    with torch.no_grad():
        for w in BATCHES:
            model.model(input_ids=w[:, :-1])
    h.remove()
    per_sample_mean = torch.cat([t.mean(1) for t in x])  # [samples, ffn]
    per_sample_max = torch.cat([t.amax(1) for t in x])
    per_sample_l2 = torch.cat([t.square().sum(1).sqrt() for t in x])
    want = {("l2", "mean"): per_sample_mean.square().sum(0).sqrt(),
            ("mean", "mean"): per_sample_mean.mean(0),
            ("max", "max"): per_sample_max.amax(0),
            ("mean", "l2"): per_sample_l2.mean(0)}
    for (batch_agg, seq_agg), expected in want.items():
        imp = calibrate(model, BATCHES, batch_agg=batch_agg, seq_agg=seq_agg)
        torch.testing.assert_close(imp.mlp[0], expected, rtol=1e-5, atol=1e-6)
        assert (imp.heads > 0).all() and (imp.hidden > 0).all()


def test_importance_json_round_trip_and_reuse(tmp_path):
    model = tiny_model("qwen2")
    shape = Arch(model).shape
    imp = calibrate(model, BATCHES, lm_loss=True)
    imp.save(tmp_path / "importance.json", shape)
    back = load_importance(tmp_path, shape)  # a directory holding importance.json works too
    for name in ("mlp", "heads", "hidden", "block_influence", "lm_loss", "angular"):
        torch.testing.assert_close(getattr(back, name), getattr(imp, name), rtol=1e-5, atol=1e-7)
    assert back.meta["samples"] == 6 and back.meta["batch_agg"] == "l2"
    t = Arch(model).shape
    plan = student_shape(t, _width(ffn_hidden_size=20, num_key_value_heads=1), "x")
    assert [s.tolist() for s in select_width(back, t, plan.shape).ffn] == \
        [s.tolist() for s in select_width(imp, t, plan.shape).ffn]
    other = Arch(tiny_model("qwen2", layers=2)).shape
    with pytest.raises(UserError, match="another model"):
        load_importance(tmp_path / "importance.json", other)


def test_random_importance_is_seeded():
    shape = Arch(tiny_model("llama")).shape
    a, b, c = random_importance(shape, 1), random_importance(shape, 1), random_importance(shape, 2)
    assert torch.equal(a.mlp, b.mlp) and not torch.equal(a.mlp, c.mlp)
    assert a.kind == "random" and isinstance(a, Importance)
