"""Shared-teacher distillation (engine/training/shared_teacher.py): three students trained over one
teacher forward per micro-batch take the same steps (losses, gradient norms, weights) as three
separate runs, each with its own teacher (tiny models, fp32, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)

from engine.config import DistillConfig
from engine.distill.losses import LossSpec
from engine.distill.objective import HiddenSpec
from engine.stages.training import sharing_conflicts
from engine.training.setup import lr_at, make_accelerator
from engine.training.shared_teacher import launch_shared
from engine.training.step import Trainer, shared_teacher

VOCAB = 64


def _llama(hidden: int, layers: int, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).float()


# (student shape, [distill] keys, hidden-state map): the students differ in everything but the data
STUDENTS = [
    ((48, 2), dict(loss="forward_kl", lr=3e-3), None),
    ((32, 2), dict(loss="reverse_kl", ce_weight=0.5, temperature=2.0, lr=2e-3), HiddenSpec(1.0, "cosine", ((1, 3),))),
    ((48, 3), dict(loss="jsd", top_k=8, lr=1e-3, warmup_steps=0), HiddenSpec(0.5, "mse", ((0, 1), (2, 2)))),
]
STEPS, MICRO, ACCUMULATION = 3, 2, 2


def _configs() -> list[DistillConfig]:
    return [DistillConfig(steps=STEPS, global_batch_size=MICRO * ACCUMULATION, micro_batch_size=MICRO,
                          chunk_tokens=16, **keys) for _, keys, _ in STUDENTS]


def _spec(cfg: DistillConfig) -> LossSpec:
    return LossSpec(kind=cfg.loss, temperature=cfg.temperature, top_k=cfg.top_k, kd_weight=cfg.kd_weight,
                    ce_weight=cfg.ce_weight, vocab=VOCAB, chunk_tokens=cfg.chunk_tokens)


def _batches() -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [[torch.randint(0, VOCAB, (MICRO, 17), generator=g) for _ in range(ACCUMULATION)] for _ in range(STEPS)]


def _trainer(acc, i: int, teacher) -> Trainer:
    (hidden, layers), _, hid = STUDENTS[i]
    cfg = _configs()[i]
    student = _llama(hidden, layers, seed=10 + i)
    torch.manual_seed(100 + i)  # the hidden-state projection's initialisation
    return Trainer(acc, student, cfg, _spec(cfg), teacher=teacher, hidden=hid)


def test_shared_teacher_steps_equal_separate_runs() -> None:
    acc = make_accelerator("ddp", "no")
    teacher = _llama(48, 4, seed=1)
    batches = _batches()
    cfgs = _configs()

    separate: list[list[float]] = []  # loss, grad norm of each step
    separate_weights = []
    for i in range(len(STUDENTS)):
        trainer = _trainer(acc, i, copy.deepcopy(teacher))
        stats = [trainer.step(batches[s], lr_at(s, cfgs[i])) for s in range(STEPS)]
        separate.append([x for r in stats for x in (r.loss, r.grad_norm)])
        separate_weights.append({k: v.clone() for k, v in trainer.unwrapped().state_dict().items()})

    one = shared_teacher(acc, copy.deepcopy(teacher), [hid for _, _, hid in STUDENTS])
    calls = []
    one.register_forward_hook(lambda *_: calls.append(1))
    trainers = [_trainer(acc, i, one) for i in range(len(STUDENTS))]
    shared: list[list[float]] = [[] for _ in STUDENTS]
    for s in range(STEPS):
        pending = launch_shared(trainers, batches[s], [lr_at(s, c) for c in cfgs])
        for i, p in enumerate(pending):
            r = p.result()
            assert r.finite
            shared[i] += [r.loss, r.grad_norm]
    assert len(calls) == STEPS * ACCUMULATION  # one teacher forward per micro-batch, not one per student

    for i in range(len(STUDENTS)):
        assert shared[i] == pytest.approx(separate[i], rel=1e-6, abs=1e-7)
        state = trainers[i].unwrapped().state_dict()
        assert state.keys() == separate_weights[i].keys()
        for k, v in state.items():
            torch.testing.assert_close(v, separate_weights[i][k], rtol=1e-6, atol=1e-7)
    # the students did learn different things (the equality above is not of untouched weights)
    assert separate[0][-2] != pytest.approx(separate[0][0], rel=1e-3)


def test_students_reading_other_batches_cannot_share() -> None:
    a, b, c = _configs()
    assert sharing_conflicts({"a": a, "b": b, "c": c}) == []
    other = b.model_copy(update={"seed": 5, "global_batch_size": 8})
    lines = sharing_conflicts({"a": a, "b": other})
    assert lines == ["distill.seed differs (a 1234, b 5): they read other batches",
                     "distill.global_batch_size differs (a 4, b 8): they read other batches"]


def test_a_released_trainer_takes_its_hooks_off_the_teacher_model() -> None:
    """The search's audit wraps the same teacher model once per candidate, with a hidden-state loss: each
    Trainer's capture hooks stayed on the model, and every later teacher forward filled every earlier
    candidate's capture too (memory held and copies made for trainers long gone)."""
    from engine.distill.objective import decoder_layers

    acc = make_accelerator("ddp", "no")
    teacher = _llama(48, 4, seed=1)

    def hooked() -> int:
        return sum(len(layer._forward_hooks) for layer in decoder_layers(teacher))

    for i in (1, 2):  # the students with hidden-state maps, one after the other over the same model
        trainer = _trainer(acc, i, teacher)
        assert hooked() == len({t for _, t in STUDENTS[i][2].layer_map})
        trainer.step(_batches()[0], lr_at(0, _configs()[i]))
        trainer.release()
        assert hooked() == 0
    shared = shared_teacher(acc, teacher, [STUDENTS[1][2]])  # a shared Teacher is its maker's to release
    trainer = Trainer(acc, _llama(32, 2, seed=11), _configs()[1], _spec(_configs()[1]), teacher=shared,
                      hidden=STUDENTS[1][2])
    trainer.release()
    assert hooked() == 1
