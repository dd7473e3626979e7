"""The teacher's forward replayed as a CUDA graph (engine/distill/teacher_graph.py) gives the plain
forward's outputs, call after call, with new inputs each time; off the GPU it is the plain forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from engine.distill.objective import Teacher
from engine.distill.teacher_graph import GraphedForward


def _teacher(device: str, capture_layers: list[int] | None = None) -> Teacher:
    cfg = AutoConfig.for_model("llama", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(device)
    return Teacher(model, capture_layers)


def _check_graphed_equals_plain(device: str) -> list[str]:
    plain, graphed = _teacher(device, [0, 2]), _teacher(device, [0, 2])
    said: list[str] = []
    graphed.use_cuda_graphs(said.append)
    gen = torch.Generator().manual_seed(1)
    for call in range(6):  # 2 warm-up calls, the capture, then replays
        ids = torch.randint(0, 97, (2, 16), generator=gen).to(device)
        want_h, want_layers = plain(ids)
        got_h, got_layers = graphed(ids)
        torch.testing.assert_close(got_h, want_h, msg=f"call {call}")
        assert sorted(got_layers) == [0, 2]
        for i in (0, 2):
            torch.testing.assert_close(got_layers[i], want_layers[i], msg=f"call {call}, layer {i}")
    other = torch.randint(0, 97, (3, 8), generator=gen).to(device)  # another shape: plain, then its own graph
    torch.testing.assert_close(graphed(other)[0], plain(other)[0])
    return said


def test_a_graphed_teacher_on_the_cpu_is_the_plain_forward() -> None:
    said = _check_graphed_equals_plain("cpu")
    assert said == []  # nothing to capture, nothing to say


def test_graphed_forward_counts_warm_up_calls_per_shape_and_keeps_a_bounded_number_of_shapes() -> None:
    calls: list[tuple[int, ...]] = []

    def forward(ids: torch.Tensor):
        calls.append(tuple(ids.shape))
        return ids.float(), {}

    g = GraphedForward(forward, warmup_calls=2, max_shapes=1)
    for _ in range(5):
        g(torch.zeros(2, 3, dtype=torch.long))
    assert calls == [(2, 3)] * 5 and g.graphs == {}  # CPU tensors: never captured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_graphed_teacher_on_the_gpu_equals_the_plain_forward() -> None:
    said = _check_graphed_equals_plain("cuda")
    assert not any("off" in s for s in said), said
