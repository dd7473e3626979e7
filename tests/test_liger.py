"""`kernels = "liger"` (engine/models/liger.py): the option's checks, and what patching changes.

Liger's Triton kernels need CUDA (Triton's CPU interpreter does not run them), so on the CPU these
tests check the validation, the stage's one-line error, and the patching itself: which modules
run Liger's forward, that classes and state_dict keys stay stock transformers, and that the
process-wide RoPE switch falls back to the stock function off CUDA and can be undone. Tests that
need the package skip without it (CI installs `.[dev,eval]`, not the `[liger]` extra).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _train_util import FINETUNE, experiment_toml, prepared_exp, run_inprocess
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)

from engine.config import ConfigError, liger_install, loads_experiment
from engine.config.arch import SUPPORTED_MODEL_TYPES
from engine.errors import UserError
from engine.models import liger

TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            vocab_size=50, num_hidden_layers=2)


def _experiment(tmp_path: Path, kernels: str) -> str:
    return experiment_toml("lig", tmp_path / "runs", finetune=FINETUNE + f'kernels = "{kernels}"\n')


def _one_line_error(tmp_path: Path, kernels: str) -> str:
    with pytest.raises(ConfigError) as e:
        loads_experiment(_experiment(tmp_path, kernels))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---- validation (no liger needed) -------------------------------------------------------


def test_unknown_kernels_value_is_one_line(tmp_path: Path) -> None:
    msg = _one_line_error(tmp_path, "cuda")
    assert "finetune.kernels" in msg and "'torch'" in msg and "'liger'" in msg and "'cuda'" in msg


def test_default_is_torch_and_needs_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(liger_install, "installed_version", lambda: None)
    exp = loads_experiment(experiment_toml("lig", tmp_path / "runs", finetune=FINETUNE))
    assert exp.finetune.kernels == "torch"
    assert liger.apply_kernels(torch.nn.Linear(2, 2), "torch", cuda=False) is False


def test_liger_without_the_package_names_the_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(liger_install, "installed_version", lambda: None)
    msg = _one_line_error(tmp_path, "liger")
    assert "finetune.kernels" in msg and 'pip install "slimlab[liger]"' in msg and 'kernels = "torch"' in msg


def test_liger_too_old_names_the_upgrade(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(liger_install, "installed_version", lambda: "0.5.10")
    msg = _one_line_error(tmp_path, "liger")
    assert "0.5.10" in msg and "0.8.5" in msg and "pip install -U" in msg


def test_liger_installed_validates(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(liger_install, "installed_version", lambda: "0.8.5")
    assert loads_experiment(_experiment(tmp_path, "liger")).finetune.kernels == "liger"


def test_stage_on_cpu_fails_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """A training stage with kernels = "liger" and no CUDA: exit 2, one line naming the fix."""
    monkeypatch.setattr(liger_install, "installed_version", lambda: "0.8.5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    exp = prepared_exp(tmp_path, "ligcpu", finetune=FINETUNE + 'kernels = "liger"\n')
    assert run_inprocess(exp, "finetune") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert 'kernels = "liger" (model)' in errors[0] and "CUDA" in errors[0] and 'set kernels = "torch"' in errors[0]
    assert not (tmp_path / "runs" / "ligcpu" / "finetune" / "model").exists()


def test_model_problems_name_the_fix() -> None:
    assert liger.model_problem(SimpleNamespace(model_type="llama", hidden_act="silu")) is None
    gemma = liger.model_problem(SimpleNamespace(model_type="gemma", hidden_act="silu"))
    assert gemma is not None and "'gemma'" in gemma and 'kernels = "torch"' in gemma
    gelu = liger.model_problem(SimpleNamespace(model_type="llama", hidden_act="gelu"))
    assert gelu is not None and "'gelu'" in gelu


def test_apply_kernels_on_cpu_raises_before_patching(monkeypatch) -> None:
    monkeypatch.setattr(liger, "apply_liger", lambda *a, **k: pytest.fail("patched on the CPU"))
    model = SimpleNamespace(config=SimpleNamespace(model_type="llama", hidden_act="silu"))
    with pytest.raises(UserError, match="CUDA GPU"):
        liger.apply_kernels(model, "liger", cuda=False, what="student")


def test_every_supported_model_type_has_a_liger_patch() -> None:
    assert set(liger.LIGER_PATCHES) == set(SUPPORTED_MODEL_TYPES)


# ---- patching (needs liger-kernel; runs no kernel) --------------------------------------


@pytest.fixture
def liger_pkg():
    pkg = pytest.importorskip("liger_kernel.transformers", exc_type=ImportError)  # absent, or refuses this transformers
    yield pkg
    liger.undo_rope()  # the RoPE switch is process-wide: leave the other tests stock


def _tiny(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type=model_type, **TINY))


def _liger_targets(model) -> set[str]:
    """What Liger should take over: every RMSNorm and every MLP of the decoder."""
    return {name for name, m in model.named_modules()
            if type(m).__name__.endswith(("RMSNorm", "MLP"))}


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_liger_patches_the_instance_and_keeps_it_stock(liger_pkg, model_type: str, tmp_path: Path) -> None:
    assert hasattr(liger_pkg, liger.LIGER_PATCHES[model_type])
    model = _tiny(model_type)
    classes = {name: type(m) for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    targets = _liger_targets(model)
    assert any(n.endswith("mlp") for n in targets) and any(n.endswith("norm") for n in targets)

    liger.apply_liger(model)

    assert set(liger.patched_modules(model)) == targets
    assert {name: type(m) for name, m in model.named_modules()} == classes
    assert list(model.state_dict()) == list(state)
    # the module's classes stay stock: a model built afterwards has no Liger module
    assert liger.patched_modules(_tiny(model_type)) == []
    # saved and reloaded with plain transformers: the same classes and weights
    model.save_pretrained(tmp_path / "m")
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert liger.patched_modules(back) == []
    assert {name: type(m) for name, m in back.named_modules()} == classes
    assert all(torch.equal(back.state_dict()[k], v) for k, v in state.items())


def test_rope_switch_is_stock_off_cuda_and_undone(liger_pkg) -> None:
    modeling = liger._modeling_module("llama")
    stock = modeling.apply_rotary_pos_emb
    liger.apply_liger(_tiny("llama"))
    liger.apply_liger(_tiny("llama"))  # a second model (the teacher): no second wrapper
    switched = modeling.apply_rotary_pos_emb
    assert switched is not stock and getattr(switched, liger._ORIGINAL) is stock
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    cos, sin = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    for got, want in zip(switched(q, k, cos, sin), stock(q, k, cos, sin), strict=True):
        assert torch.equal(got, want)
    liger.undo_rope()
    assert modeling.apply_rotary_pos_emb is stock


def test_rope_off_leaves_the_stock_function(liger_pkg) -> None:
    modeling = liger._modeling_module("qwen2")
    stock = modeling.apply_rotary_pos_emb
    model = _tiny("qwen2")
    liger.apply_liger(model, rope=False)
    assert modeling.apply_rotary_pos_emb is stock and liger.patched_modules(model)
