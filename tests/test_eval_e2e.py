"""The Decide evaluation end to end on the CPU: a tiny demo run with the shipped local lm-eval task,
speed and samples; compare shows them; the per-model cache; bad [eval] input is refused up front."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.contract import RunLayout, read_json

pytest.importorskip("lm_eval", reason='needs the [eval] extra: pip install -e ".[eval]"')

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "experiments" / "demo.toml"
MODELS = ["teacher", "prune-depth", "prune-width", "distill-depth", "distill-width"]
TINY = [
    'model.arch={model_type = "llama", hidden_size = 48, intermediate_size = 128, num_hidden_layers = 3, '
    'num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 96, tie_word_embeddings = true}',
    "model.tokenizer_train_vocab=512", "data.seq_length=32", "data.max_tokens=60000",
    "finetune.steps=8", "finetune.global_batch_size=8", "finetune.micro_batch_size=8", "finetune.warmup_steps=1",
    "finetune.val_interval=4", "finetune.val_batches=1", "finetune.checkpoint_interval=8",
    "prune.depth.num_layers=1", "prune.depth.calibration_samples=8",
    "prune.width.ffn_hidden_size=64", "prune.width.hidden_size=32", "prune.width.calibration_samples=8",
    "distill.steps=2", "distill.global_batch_size=8", "distill.micro_batch_size=8", "distill.warmup_steps=1",
    "distill.val_interval=2", "distill.val_batches=1", "distill.checkpoint_interval=2",
    "eval.batches=1", "eval.micro_batch_size=8", "eval.limit=12", "eval.task_batch_size=4",
    "eval.speed_batch_sizes=[1, 2]", "eval.speed_prompt_tokens=16", "eval.speed_new_tokens=4",
    "eval.speed_repeats=2", "eval.speed_max_seconds=2", "eval.max_new_tokens=6",
    'eval.tasks=["experiments/tasks/stdlib_lastword"]',  # a task with a perplexity (the demo's is multiple choice)
]


def engine(*args: str, cwd: Path = ROOT, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def run(runs: Path, *extra: str) -> subprocess.CompletedProcess:
    return engine("run", str(DEMO), "--runs-dir", str(runs), *[x for o in TINY for x in ("--set", o)], *extra)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("decide") / "runs"
    out = run(runs)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return runs / "demo"


def _finite_positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_results_have_tasks_speed_and_samples_for_every_model(tiny_run):
    doc = read_json(RunLayout(tiny_run).results_file)
    assert list(doc["models"]) == MODELS
    for name, m in doc["models"].items():
        assert m["params"] > 0 and set(m["splits"]) == {"validation", "test"}, name  # today's keys stay
        task = m["tasks"]["stdlib_lastword"]
        assert 0.0 <= task["acc"] <= 1.0 and task["acc_stderr"] is not None and task["acc_stderr"] >= 0, name
        assert _finite_positive(task["perplexity"]), name
        sp = m["speed"]
        assert sp["device"].startswith("CPU")
        assert set(sp["decode_tokens_per_s"]) == set(sp["ms_per_token"]) == {"1", "2"}, name
        assert all(_finite_positive(v) for v in [*sp["decode_tokens_per_s"].values(), *sp["ms_per_token"].values(),
                                                 sp["prefill_tokens_per_s"], sp["peak_memory_gb"]]), (name, sp)
        assert _finite_positive(sp["speedup_vs_teacher"])
        assert sp["prompt_tokens"] == 16 and sp["new_tokens"] == 4
        # timed together, round robin, with the spread and the repeat count of every figure
        assert sp["interleaved"] == MODELS and sp["repeats"] >= 2 and sp["stopped"] in ("spread", "time cap", "round cap")
        assert set(sp["spread"]["decode"]) == set(sp["decode_tokens_per_s_range"]) == {"1", "2"}, name
        lo, hi = sp["decode_tokens_per_s_range"]["1"]
        assert lo <= sp["decode_tokens_per_s"]["1"] <= hi and isinstance(sp["under_load"], bool), (name, sp)
        assert name == "teacher" or len(sp["speedup_range"]) == 2
        assert len(m["samples"]) == 3 and all(isinstance(s["prompt"], str) and s["prompt"] and isinstance(s["text"], str)
                                              for s in m["samples"]), name
    assert doc["models"]["teacher"]["speed"]["speedup_vs_teacher"] == 1.0
    # the same prompts for every model, so the texts can be read side by side
    assert len({tuple(s["prompt"] for s in m["samples"]) for m in doc["models"].values()}) == 1
    # a smaller model holds less: weights + KV cache on the CPU
    mem = {n: doc["models"][n]["speed"]["peak_memory_gb"] for n in MODELS}
    assert mem["distill-width"] < mem["teacher"] and mem["distill-depth"] < mem["teacher"]


def test_compare_prints_task_scores_speed_and_samples(tiny_run, tmp_path):
    out = engine("compare", str(tiny_run), "--samples", "--no-chart", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "which student?" in text and "stdlib_lastword" in text and "decode @1" in text and "speedup" in text
    doc = read_json(RunLayout(tiny_run).results_file)
    acc = doc["models"]["distill-width"]["tasks"]["stdlib_lastword"]["acc"]
    width_line = next(ln for ln in text.splitlines() if ln.strip().startswith("width ") and "->" in ln)
    assert f"{acc:.3f}" in width_line
    first_prompt = doc["models"]["teacher"]["samples"][0]["prompt"].split("\n")[0]
    assert "prompt 1:" in text and first_prompt[:20] in text
    report = (tmp_path / "report.md").read_text()
    header = next(ln for ln in report.splitlines() if ln.startswith("| model | shape |"))
    assert "## Which student?" in report and "| stdlib_lastword |" in header and "| speedup |" in header
    width_row = next(ln for ln in report.splitlines() if ln.startswith("| width |") and "->" in ln)
    assert f"| {acc:.3f} |" in width_row
    assert "## Samples" in report and "![quality vs speed](quality_speed.png)" in report
    assert (tmp_path / "quality_speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / "demo")
    return runs


def test_changing_one_student_reevaluates_only_its_models(tiny_run, tmp_path):
    runs = _copy(tiny_run, tmp_path)
    before = read_json(RunLayout(runs / "demo").results_file)["models"]
    out = run(runs, "--set", "prune.width.hidden_size=40")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = RunLayout(runs / "demo").log_file("eval").read_text()
    after = read_json(RunLayout(runs / "demo").results_file)["models"]
    for name in ("teacher", "prune-depth", "distill-depth"):
        assert f"[eval] {name}: unchanged since the last evaluation; kept" in log, name
        assert after[name]["cache_key"] == before[name]["cache_key"]
        assert after[name]["samples"] == before[name]["samples"]
    for name in ("prune-width", "distill-width"):
        assert after[name]["cache_key"] != before[name]["cache_key"]
        assert f"[eval] {name} validation: loss" in log.split("===== ")[-1], name
    assert after["prune-width"]["params"] > before["prune-width"]["params"]
    # speed: the kept models are timed again beside the changed ones, never compared across two sittings
    attempt = log.split("===== ")[-1]
    for name in ("teacher", "prune-depth", "distill-depth"):
        assert f"[eval] {name}: loaded again to be timed with the others" in attempt, name
    assert all(after[n]["speed"]["interleaved"] == MODELS for n in MODELS)


def test_an_interrupted_eval_resumes_without_repeating_finished_models(tiny_run, tmp_path):
    runs = _copy(tiny_run, tmp_path)
    layout = RunLayout(runs / "demo")
    doc = read_json(layout.results_file)
    done = {k: doc["models"][k] for k in MODELS[:2]}  # as written after the second model, then killed
    layout.results_file.write_text(json.dumps({**doc, "models": done}))
    out = run(runs, "--only", "eval")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    attempt = layout.log_file("eval").read_text().split("===== ")[-1]
    for name in MODELS[:2]:
        assert f"[eval] {name}: unchanged since the last evaluation; kept" in attempt
        assert f"[eval] {name} validation" not in attempt
    for name in MODELS[2:]:
        assert f"[eval] {name} validation: loss" in attempt
    assert list(read_json(layout.results_file)["models"]) == MODELS


def test_tasks_without_lm_eval_is_one_line_and_writes_nothing(tmp_path):
    runs = tmp_path / "runs"
    code = ("import sys; sys.modules['lm_eval'] = None\n"  # as if the [eval] extra were not installed
            "from engine.cli import main; sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "run", str(DEMO), "--runs-dir", str(runs)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "slimlab[eval]"' in lines[0] and "eval.tasks" in lines[0]
    assert not runs.exists()


def test_a_missing_local_task_is_refused_before_anything_runs(tmp_path):
    runs = tmp_path / "runs"
    out = engine("run", str(DEMO), "--runs-dir", str(runs), "--set", 'eval.tasks=["tasks/nope.yaml"]')
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "tasks/nope.yaml" in lines[0] and "eval.tasks" in lines[0]
    assert not runs.exists()
