"""Search candidates built from views of the teacher sorted by importance (issue 14): the same
students as the index_select build, without copies, and the teacher restored afterwards."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from _prune_util import logits, tiny_model, tokens
from _util import one_thread  # noqa: F401  (autouse)

from engine.config.shape import Shape, StudentShape
from engine.evaluation.loss import evaluate_loss
from engine.models.adapter import Arch
from engine.prune.importance import random_importance
from engine.prune.student import SortedTeacher, prune_student
from engine.prune.width import sorted_importance

# 8 heads in 4 KV groups (qwen3: its own 4/2 heads), so that heads can go by whole groups or within groups
HEADS = {"llama": dict(num_attention_heads=8, num_key_value_heads=4, hidden_size=48, head_dim=6),
         "mistral": dict(num_attention_heads=8, num_key_value_heads=4),
         "qwen2": dict(num_attention_heads=8, num_key_value_heads=4, hidden_size=48, head_dim=6),
         "qwen3": {}}


def _teacher(model_type: str) -> torch.nn.Module:
    return tiny_model(model_type, layers=4, **HEADS[model_type])


def _targets(t: Shape) -> dict[str, StudentShape]:
    """Hidden + ffn + layer cuts; whole KV groups; heads within each group (+ a layer cut)."""
    g = t.group_size
    return {
        "hidden-ffn-layers": StudentShape("a", "search", replace(
            t, num_layers=3, hidden_size=t.hidden_size - 8, intermediate_size=t.intermediate_size - 16),
            num_drop=1, selection="lm-loss"),
        "kv-groups": StudentShape("b", "search", replace(
            t, num_heads=t.num_heads // 2, num_kv_heads=t.num_kv_heads // 2, intermediate_size=t.intermediate_size - 8)),
        "heads-in-groups": StudentShape("c", "search", replace(
            t, num_layers=2, num_heads=t.num_kv_heads * (g // 2), hidden_size=t.hidden_size - 4),
            num_drop=2, selection="lm-loss"),
    }


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
def test_view_built_candidates_score_as_the_index_select_build(model_type):
    teacher = _teacher(model_type)
    t = Arch(teacher).shape
    imp = random_importance(t, seed=3)
    ids = tokens(batch=2, seq=12, seed=1)
    windows = [tokens(batch=2, seq=13, seed=s) for s in (2, 3)]
    before = {}  # measured before sorting: prune_student's students share the teacher's unchanged tensors
    for name, target in _targets(t).items():
        student = prune_student(teacher, imp, target)
        before[name] = logits(student, ids), evaluate_loss(student, windows)
    with SortedTeacher(teacher, imp) as sorted_teacher:
        for name, target in _targets(t).items():
            cand = sorted_teacher.student(target)
            assert cand.config.num_hidden_layers == target.shape.num_layers, name
            torch.testing.assert_close(logits(cand, ids), before[name][0], rtol=1e-5, atol=1e-5)
            assert evaluate_loss(cand, windows) == pytest.approx(before[name][1], rel=1e-6)


def _storages(model: torch.nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in model.parameters()}


def test_candidates_are_views_of_the_sorted_teacher_and_keep_its_prefixes():
    """No weight is copied, except the query rows when KV groups lose heads; and each candidate is
    exactly (bit for bit) what index_select keeps of the sorted teacher by its permuted scores,
    ties in the scores included (the lower index ranks first in both)."""
    teacher = _teacher("llama")
    t = Arch(teacher).shape
    imp = random_importance(t, seed=4)
    imp = replace(imp, mlp=(imp.mlp * 4).round(), hidden=(imp.hidden * 4).round())  # many ties
    with SortedTeacher(teacher, imp) as sorted_teacher:
        imp_sorted = sorted_importance(imp, sorted_teacher.order)
        shared = _storages(teacher)
        for name, target in _targets(t).items():
            cand = sorted_teacher.student(target)
            copied = {k for k, p in cand.named_parameters() if p.untyped_storage().data_ptr() not in shared}
            want = {k for k in copied if k.endswith(("q_proj.weight", "o_proj.weight"))} \
                if name == "heads-in-groups" else set()
            assert copied == want and (name != "heads-in-groups" or copied), name
            twin = prune_student(teacher, imp_sorted, target)
            twin_state = twin.state_dict()
            for k, v in cand.state_dict().items():
                assert torch.equal(v, twin_state[k]), (name, k)


def test_the_teacher_is_restored_bit_for_bit_even_after_an_error():
    teacher = _teacher("qwen2")
    t = Arch(teacher).shape
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in teacher.state_dict().items()}
    sorter = SortedTeacher(teacher, random_importance(t, seed=5))
    with pytest.raises(KeyError), sorter:
        assert not torch.equal(teacher.model.layers[0].mlp.up_proj.weight, state["model.layers.0.mlp.up_proj.weight"])
        raise KeyError("scoring failed")
    after = teacher.state_dict()
    assert all(torch.equal(after[k], v) and after[k].data_ptr() == ptrs[k] for k, v in state.items())
    with pytest.raises(RuntimeError, match="with"):
        sorter.student(_targets(t)["kv-groups"])
