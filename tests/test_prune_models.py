"""Width and depth pruning of tiny random Llama / Mistral / Qwen2 / Qwen3 models.

Every pruned model must reload with stock AutoModelForCausalLM and give the in-memory logits;
a no-op target must give the teacher's logits; parameter counts must match the arithmetic.
"""

from __future__ import annotations

import pytest
import torch
from _prune_util import ARCHS, logits, tiny_model, tokens
from transformers import AutoModelForCausalLM

from engine.config import PruneConfig
from engine.config.shape import count_params, shape_from_config, student_shape
from engine.models.adapter import Arch
from engine.models.hf import count_parameters, save_model
from engine.prune.depth import prune_depth
from engine.prune.importance import calibrate, random_importance
from engine.prune.width import prune_width, select_width

ALL = list(ARCHS)


def _width(name: str = "w", **targets) -> PruneConfig:
    return PruneConfig(name=name, method="width", **targets)


def _reload(model, tmp_path):
    out = save_model(model, tmp_path / "model")
    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()


def _config_params(model) -> int:
    return count_params(shape_from_config(model.config.to_dict()))


@pytest.fixture(scope="module")
def teachers():
    models = {mt: tiny_model(mt) for mt in ALL}
    imps = {mt: calibrate(m, [tokens(2, 13, seed=s) for s in range(2)]) for mt, m in models.items()}
    return models, imps


@pytest.mark.parametrize("model_type", ALL)
def test_width_prune_reloads_with_same_logits(model_type, teachers, tmp_path):
    teacher, imp = teachers[0][model_type], teachers[1][model_type]
    t = Arch(teacher).shape
    targets = dict(ffn_hidden_size=t.intermediate_size // 2, hidden_size=16, num_attention_heads=2,
                   num_key_value_heads=1)
    plan = student_shape(t, _width(**targets), "x")
    student = prune_width(teacher, select_width(imp, t, plan.shape), plan.shape)

    c = student.config
    assert (c.intermediate_size, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == \
        (t.intermediate_size // 2, 16, 2, 1)
    assert c.head_dim == t.head_dim  # kept and explicit
    assert count_parameters(student) == _config_params(student) == count_params(plan.shape)
    assert Arch(student).tied == t.tied

    reloaded = _reload(student, tmp_path)
    assert reloaded.config.head_dim == t.head_dim
    ids = tokens()
    torch.testing.assert_close(logits(reloaded, ids), logits(student, ids), rtol=0, atol=1e-6)
    assert not torch.allclose(logits(student, ids), logits(teacher, ids)[..., :], atol=1e-3)


@pytest.mark.parametrize("model_type", ALL)
def test_width_prune_to_the_same_size_keeps_the_teacher(model_type, teachers):
    teacher = teachers[0][model_type]
    t = Arch(teacher).shape
    imp = random_importance(t, seed=3)  # any ranking: nothing is cut, so nothing may change
    plan = student_shape(t, _width(ffn_hidden_size=t.intermediate_size, hidden_size=t.hidden_size), "x")
    student = prune_width(teacher, select_width(imp, t, plan.shape), plan.shape)
    ids = tokens(seed=5)
    torch.testing.assert_close(logits(student, ids), logits(teacher, ids), rtol=0, atol=0)
    assert count_parameters(student) == count_parameters(teacher) == _config_params(teacher)


@pytest.mark.parametrize("model_type", ALL)
def test_depth_prune_reloads_and_renumbers_layers(model_type, teachers, tmp_path):
    teacher = teachers[0][model_type]
    student = prune_depth(teacher, [1])
    assert student.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    # the kept layers are the teacher's layers 0 and 2, weights unchanged
    torch.testing.assert_close(student.model.layers[1].mlp.down_proj.weight,
                               teacher.model.layers[2].mlp.down_proj.weight, rtol=0, atol=0)
    assert count_parameters(student) == _config_params(student)

    reloaded = _reload(student, tmp_path)
    ids = tokens(seed=7)
    torch.testing.assert_close(logits(reloaded, ids), logits(student, ids), rtol=0, atol=1e-6)
    # the KV cache indexes layers by layer_idx: incremental decoding must match a full forward
    with torch.no_grad():  # the cache travels positionally: its keyword was renamed within 5.x
        past = reloaded(ids[:, :-1], use_cache=True)[1]
        last = reloaded(ids[:, -1:], None, None, past, use_cache=True).logits[:, -1]
    torch.testing.assert_close(last, logits(reloaded, ids)[:, -1], rtol=1e-4, atol=1e-5)


def test_depth_prune_keeps_per_layer_config_lists(tmp_path):
    # qwen2 with sliding-window layers: layer_types must follow the kept layers
    teacher = tiny_model("qwen2", layers=4, use_sliding_window=True, sliding_window=5, max_window_layers=2)
    assert teacher.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    student = prune_depth(teacher, [0, 2])
    assert student.config.layer_types == ["full_attention", "sliding_attention"]
    assert student.config.max_window_layers == 1
    reloaded = _reload(student, tmp_path)
    assert reloaded.config.layer_types == ["full_attention", "sliding_attention"]
    ids = tokens(seq=12)
    torch.testing.assert_close(logits(reloaded, ids), logits(student, ids), rtol=0, atol=1e-6)


def test_width_keeps_tied_embeddings_tied_and_untied_untied(teachers):
    for mt in ("llama", "mistral"):
        teacher, imp = teachers[0][mt], teachers[1][mt]
        t = Arch(teacher).shape
        plan = student_shape(t, _width(hidden_size=16), "x")
        student = prune_width(teacher, select_width(imp, t, plan.shape), plan.shape)
        assert Arch(student).tied == (mt == "llama")
        assert student.lm_head.weight.shape == (t.vocab_size, 16)


def test_mlp_bias_and_attention_bias_are_pruned(tmp_path):
    teacher = tiny_model("llama", mlp_bias=True, attention_bias=True)
    t = Arch(teacher).shape
    imp = calibrate(teacher, [tokens(2, 9)])
    plan = student_shape(t, _width(ffn_hidden_size=20, hidden_size=16, num_attention_heads=2), "x")
    student = prune_width(teacher, select_width(imp, t, plan.shape), plan.shape)
    assert student.model.layers[0].mlp.up_proj.bias.shape == (20,)
    assert student.model.layers[0].self_attn.o_proj.bias.shape == (16,)
    assert count_parameters(student) == _config_params(student) == count_params(plan.shape)
    ids = tokens()
    torch.testing.assert_close(logits(_reload(student, tmp_path), ids), logits(student, ids), rtol=0, atol=1e-6)


def test_unsupported_architecture_is_refused_by_name():
    from transformers import AutoConfig

    from engine.errors import UserError

    cfg = AutoConfig.for_model("gpt2", n_embd=16, n_layer=1, n_head=2, vocab_size=50)
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UserError, match="llama, mistral, qwen2, qwen3"):
        Arch(model)
