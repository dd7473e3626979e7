"""`slimlab-engine export RUN STUDENT DIR`: the student as a self-contained Hugging Face folder with a
model card, which loads in stock transformers (the same logits, `pipeline("text-generation")`) and
runs in the lm_eval command line (`--model hf`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _app_util import RunWriter
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, pipeline

from engine.contract import RunLayout, read_json, write_json
from engine.data.tokenizer import train_bpe
from engine.models.hf import save_model

ROOT = Path(__file__).resolve().parent.parent
TASK_DIR = ROOT / "experiments" / "tasks" / "stdlib_lastword"
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def engine(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _model(layers: int, vocab: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished run of one depth student: teacher (4 layers), pruned and distilled student (2),
    their tokenizer (a local one with a chat template: the student's copy has none), results."""
    tmp = tmp_path_factory.mktemp("export")
    texts = [f"def f{i}(x):\n    return x + {i}  # the value of the function" for i in range(200)]
    tok = train_bpe(texts, 300, tmp / "tok")
    teacher_tok = tmp / "teacher-tok"
    tok.chat_template = TEMPLATE
    tok.save_pretrained(teacher_tok)
    tok.chat_template = None
    w = RunWriter(tmp / "runs", "ship", students=("depth",), model={"path": "some-org/teacher-1b",
                                                                   "tokenizer": str(teacher_tok)})
    w.stage("prepare", "succeeded", total_steps=None)
    w.stage("finetune", "succeeded", step=20)
    w.stage("prune-depth", "succeeded", total_steps=None)
    w.log("prune-depth", ["[prune-depth] dropping layers [1, 2]"])
    w.metrics("prune-depth", range(0, 1), loss0=6.0, val_every=1)
    w.stage("distill-depth", "succeeded", step=20)
    w.metrics("distill-depth", range(1, 21), tokens_per_step=512)
    w.stage("eval", "succeeded", total_steps=None)
    layout = RunLayout(w.root)
    vocab = len(tok)
    save_model(_model(4, vocab, 0), layout.model_dir("finetune"), tok)
    save_model(_model(2, vocab, 1), layout.model_dir("prune-depth"), tok)
    save_model(_model(2, vocab, 2), layout.model_dir("distill-depth"), tok)
    w.result("teacher", 200_000, 3.0)
    w.result("prune-depth", 100_000, 6.0)
    w.result("distill-depth", 100_000, 3.5)
    doc = read_json(layout.results_file)
    doc["models"]["distill-depth"]["tasks"] = {"stdlib_lastword": {"acc": 0.31, "acc_stderr": 0.02}}
    doc["models"]["distill-depth"]["speed"] = {"device": "cpu (test)", "decode_tokens_per_s": {"1": 250.0},
                                               "prefill_tokens_per_s": 9000.0, "peak_memory_gb": 0.1,
                                               "speedup_vs_teacher": 1.7}
    write_json(layout.results_file, doc)
    return w.root


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shipped") / "ship-depth"
    r = engine("export", str(run), "depth", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_the_folder_is_self_contained_with_a_model_card(run, exported):
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "README.md", "slimlab_experiment.toml"} <= names
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert "base_model: some-org/teacher-1b" in card and "**some-org/teacher-1b**" in card
    assert "| layers | 4 | 2 |" in card and "(2.00x smaller)" in card
    assert "`depth` pruning" in card and "Layers dropped (0-indexed): [1, 2]." in card
    assert "**Distilled**" in card and "loss `forward_kl`" in card and "10.24k tokens" in card
    assert "| validation | 3.5000 |" in card and "| stdlib_lastword | acc | 0.31 | 0.02 |" in card
    assert "Speed on cpu (test)" in card and "1.7x the teacher's" in card
    assert "slimlab-engine run slimlab_experiment.toml" in card
    assert "Chat template: from the teacher's tokenizer" in card


def test_it_loads_in_stock_transformers_with_the_same_logits(run, exported):
    original = AutoModelForCausalLM.from_pretrained(RunLayout(run).model_dir("distill-depth")).eval()
    shipped = AutoModelForCausalLM.from_pretrained(exported).eval()
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        assert torch.equal(original(ids).logits, shipped(ids).logits)
    generate = pipeline("text-generation", model=str(exported), device="cpu")
    text = generate("def f1(x):", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("def f1(x):")
    assert generate.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|user|>hi"


def test_bad_exports_are_one_line_and_write_nothing(run, exported, tmp_path):
    r = engine("export", str(run), "nope", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.startswith("error: export: no student 'nope'") and "depth" in r.stderr
    assert not (tmp_path / "x").exists()
    r = engine("export", str(run), "depth", str(exported))  # not empty: refused without --force
    assert r.returncode == 2 and "--force" in r.stderr
    (tmp_path / "y").mkdir()
    r = engine("export", str(run), "distill-depth", str(tmp_path / "y"), "--pruned")
    assert r.returncode == 0, r.stderr
    assert "**Not distilled**" in (tmp_path / "y" / "README.md").read_text()


@pytest.mark.slow
def test_it_runs_in_the_lm_eval_command_line(exported, tmp_path):
    pytest.importorskip("lm_eval")
    task = tmp_path / "task"
    shutil.copytree(TASK_DIR, task)  # the local task's data_files are relative to its folder
    r = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf",
                        "--model_args", f"pretrained={exported},dtype=float32", "--tasks", "stdlib_lastword",
                        "--include_path", str(task), "--limit", "4", "--device", "cpu", "--batch_size", "2"],
                       cwd=task, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "stdlib_lastword" in r.stdout and "acc" in r.stdout
