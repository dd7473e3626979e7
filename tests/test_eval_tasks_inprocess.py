"""lm-eval's stderr bootstrap stays in the eval process: forking it (torch threads alive) hung an eval
stage in a futex; a pool must never be started."""

from __future__ import annotations

import multiprocessing.pool
import os
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")


def test_run_tasks_bootstraps_the_perplexity_stderr_without_a_process_pool(tmp_path: Path, monkeypatch) -> None:
    import torch
    from _train_util import make_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from engine.evaluation.task_specs import resolve_entry
    from engine.evaluation.tasks import run_tasks

    def no_pool(*_a, **_k):
        raise AssertionError("lm-eval started a process pool")

    monkeypatch.setattr(multiprocessing.pool.Pool, "__init__", no_pool)
    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer(tmp_path / "tok"))
    cfg = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=256)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    entry = resolve_entry("experiments/tasks/stdlib_lastword", None)
    tasks, _ = run_tasks(model, tokenizer, [entry], num_fewshot=0, limit=6, batch_size=2)
    metrics = tasks["stdlib_lastword"]
    assert metrics["perplexity"] > 1 and metrics["perplexity_stderr"] is not None  # bootstrapped, in process
    assert "DISABLE_MULTIPROC" not in os.environ  # restored
