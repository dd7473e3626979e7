"""float8 = true: the decoder layers' matmuls in float8 (torchao's float8 training) in student and teacher.
On the CPU torch runs float8 matmuls too (slowly), so the loss curve is checked here against the plain
path; the speed is a GPU benchmark's (benchmarks/distill_throughput.py, the -f8 variants)."""

from __future__ import annotations

import pytest
import torch
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)

from engine.config import ConfigError, loads_experiment
from engine.config.extras import Extra
from engine.errors import UserError
from engine.models import float8
from tests.test_master_adamw import _markov_batches

pytest.importorskip("torchao")

# the largest KD-loss difference, float8 against plain matmuls, over 12 steps of a tiny teacher and student
# at lr 3e-3 (measured: 1.0e-2 with bf16 weights and fp32 masters, 1.2e-2 with fp32 weights; the loss falls
# by ~1.2 meanwhile)
LOSS_TOLERANCE = 3e-2
PROJECTIONS = 7  # q, k, v, o, gate, up, down per decoder layer


def _models(hidden: int = 64, ffn: int = 128):
    from transformers import LlamaConfig, LlamaForCausalLM

    def model(layers: int, seed: int):
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=ffn,
                                            num_hidden_layers=layers, num_attention_heads=4,
                                            num_key_value_heads=2, head_dim=16, tie_word_embeddings=True))

    teacher = model(3, 0)
    with torch.no_grad():  # a teacher that knows something: its output sharpened
        teacher.lm_head.weight.mul_(8)
    return teacher, model(2, 1)


def _distill_trainer(f8: bool, master: bool):
    from engine.config import DistillConfig
    from engine.distill.losses import LossSpec
    from engine.training.setup import make_accelerator
    from engine.training.step import Trainer

    teacher, student = _models()
    cfg = DistillConfig(steps=10, lr=1e-2, min_lr=1e-3, warmup_steps=0, global_batch_size=2,
                        micro_batch_size=2, float8=f8)
    return Trainer(make_accelerator(), student, cfg, LossSpec("forward_kl", chunk_tokens=8, vocab=64),
                   teacher=teacher, master_weights=master)


@pytest.mark.parametrize("master", [True, False])
def test_float8_matmuls_follow_the_plain_loss_curve(master: bool) -> None:
    """A real Trainer distilling a tiny student: every decoder projection of both models is swapped, the
    weights stay plain parameters of their dtype, and the KD loss follows the plain path's within
    LOSS_TOLERANCE while it falls."""
    data = _markov_batches(4, seed=3)  # cycled: the curve falls smoothly enough to compare step by step
    curves = {}
    for f8 in (False, True):
        trainer = _distill_trainer(f8, master)
        student, teacher = trainer.unwrapped().student, trainer.teacher.model
        assert float8.float8_linears(student) == (2 * PROJECTIONS if f8 else 0)
        assert float8.float8_linears(teacher) == (3 * PROJECTIONS if f8 else 0)
        assert type(student.lm_head) is torch.nn.Linear  # the head feeds the fused loss from its weight
        assert {p.dtype for p in student.parameters()} == {torch.bfloat16 if master else torch.float32}
        curves[f8] = [trainer.step(data[i % 4:i % 4 + 1], lr=3e-3).loss for i in range(12)]
    plain, f8 = curves[False], curves[True]
    assert plain[-1] < plain[0] - 0.8 and f8[-1] < f8[0] - 0.8
    assert max(abs(a - b) for a, b in zip(plain, f8, strict=True)) < LOSS_TOLERANCE
    assert plain != f8  # the setting took effect


def test_a_float8_student_saves_as_a_stock_model(tmp_path) -> None:
    """The swapped modules keep the parameters' names: the trained student becomes a plain transformers
    model (engine/training/stock_model.py) that stock from_pretrained loads with the trained weights."""
    from transformers import AutoModelForCausalLM

    from engine.training.stock_model import stock_model

    trainer = _distill_trainer(True, master=False)
    for batch in _markov_batches(2):
        trainer.step([batch], lr=1e-2)
    student = trainer.unwrapped().student
    model = stock_model(student.config, student.state_dict(), "float32")
    assert float8.float8_linears(model) == 0
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    trained = student.state_dict()
    assert set(loaded.state_dict()) == set(trained)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, trained[name]), name


def test_projections_whose_sides_are_not_multiples_of_16_stay_plain() -> None:
    _, student = _models(hidden=64, ffn=72)  # the MLP's 72 is no multiple of 16
    swapped = float8.use_float8(student, torch.device("cpu"))
    assert swapped == 2 * 4  # q, k, v, o of each layer; gate, up, down stay
    assert float8.use_float8(student, torch.device("cpu")) == 0  # idempotent
    assert type(student.model.layers[0].mlp.up_proj) is torch.nn.Linear


def test_a_gpu_without_float8_matmuls_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    problem = float8.device_problem(torch.device("cuda"))
    assert problem == ("NVIDIA A100-SXM4-80GB (compute capability 8.0) has no float8 matmuls; "
                       "they need 8.9 or newer (L4, L40S, H100, H200); set float8 = false")
    _, student = _models()
    with pytest.raises(UserError, match=r"^float8 = true \(student\): NVIDIA A100-SXM4-80GB \(compute"):
        float8.use_float8(student, torch.device("cuda"), "student")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert float8.device_problem(torch.device("cuda")) is None


BASE = 'name = "t"\n[model]\npath = "some/model"\n[data]\ndataset = "wikitext"\nconfig = "wikitext-103-v1"\n'


def test_float8_is_refused_without_torchao_as_the_file_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    student = '[[prune]]\nname = "d"\nmethod = "depth"\nnum_layers = 2\n'
    text = BASE + "[distill]\nfloat8 = true\n" + student
    exp = loads_experiment(text, source="exp.toml")
    assert exp.distill.float8 is True
    plain = loads_experiment(BASE + "[distill]\n" + student, source="exp.toml")
    assert exp.stage_hash("distill-d") != plain.stage_hash("distill-d")  # other results: not resumed as plain
    monkeypatch.setattr(Extra, "installed_version", lambda self: None)
    with pytest.raises(ConfigError, match=r'torchao is not installed; pip install "slimlab\[float8\]", or set '
                                          r"float8 = false"):
        loads_experiment(text, source="exp.toml")


def test_students_differing_in_float8_do_not_share_a_teacher() -> None:
    from engine.config import DistillConfig
    from engine.stages.training import sharing_conflicts

    conflicts = sharing_conflicts({"a": DistillConfig(float8=True), "b": DistillConfig()})
    assert conflicts == ["distill.float8 differs (a true, b false): the shared teacher's matmuls run in one "
                         "precision"]
    assert sharing_conflicts({"a": DistillConfig(float8=True), "b": DistillConfig(float8=True)}) == []
