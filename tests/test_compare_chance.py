"""A task score no better than a blind guess is called so (issue 24, "The demo must show a decision"):
the eval stage records each multiple-choice task's chance level, `compare` marks scores within their
stderr of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.compare.tables import markdown_decide_table
from engine.contract import RunLayout, read_model_rows
from engine.contract.scores import at_chance, headline_metric

ROOT = Path(__file__).resolve().parent.parent


def test_at_chance_is_within_one_stderr_of_the_chance_level():
    near = {"acc": 0.30, "acc_norm": 0.27, "acc_norm_stderr": 0.03, "chance": 0.25}
    assert at_chance(near)
    assert not at_chance({**near, "acc_norm": 0.31})  # 2 stderr above
    assert not at_chance({**near, "acc_norm_stderr": 0.01})  # same score, measured tighter
    assert not at_chance({"acc": 0.26, "acc_stderr": 0.03})  # no chance level known: say nothing
    assert not at_chance({"perplexity": 4.0, "perplexity_stderr": 1.0, "chance": 4.0})  # not a score
    assert not at_chance({"mcc": 0.45, "mcc_stderr": 0.1, "chance": 0.5})  # a blind guess's mcc is 0, not 1/2
    assert headline_metric({"chance": 0.25, "bleu_x": 0.1})[0] == "bleu_x"  # never the headline


def _run_with_results(tmp_path: Path, tasks: dict[str, dict[str, float]]) -> Path:
    run = tmp_path / "demo"
    run.mkdir()
    shutil.copy(ROOT / "experiments" / "demo.toml", RunLayout(run).experiment_file)
    layout = RunLayout(run)
    layout.results_file.parent.mkdir(parents=True)
    models = {name: {"params": 1000, "tasks": {"stdlib_continue": m}} for name, m in tasks.items()}
    layout.results_file.write_text(json.dumps({"models": models}))
    return run


def test_compare_marks_the_students_at_chance_and_not_the_teacher(tmp_path):
    run = _run_with_results(tmp_path, {
        "teacher": {"acc_mutual_info": 0.44, "acc_mutual_info_stderr": 0.025, "chance": 0.25},
        "distill-depth": {"acc_mutual_info": 0.262, "acc_mutual_info_stderr": 0.022, "chance": 0.25},
        "distill-width": {"acc_mutual_info": 0.33, "acc_mutual_info_stderr": 0.024, "chance": 0.25}})
    rows = {r.label: r for r in read_model_rows(run)}
    assert rows["depth"].at_chance == {"stdlib_continue"}
    assert not rows["teacher"].at_chance and not rows["width"].at_chance
    table = markdown_decide_table(list(rows.values()))
    line = {ln.split("|")[1].strip().split(" ")[0]: ln for ln in table.splitlines()[2:]}
    assert "| 0.262 (chance) |" in line["depth"]
    assert "| 0.440 |" in line["teacher"] and "| 0.330 |" in line["width"] and "(chance)" not in line["width"]


def test_a_task_without_a_chance_level_gets_no_note(tmp_path):
    run = _run_with_results(tmp_path, {"teacher": {"acc": 0.0, "acc_stderr": 0.0, "perplexity": 900.0}})
    (row,) = [r for r in read_model_rows(run) if r.label == "teacher"]
    assert row.tasks == {"stdlib_continue": 0.0} and not row.at_chance
    assert "(chance)" not in markdown_decide_table([row])


def _local_task(folder: Path, name: str, output_type: str, choices_per_doc: list[int]) -> Path:
    """A local task whose documents have the given numbers of choices (the first is the answer)."""
    folder.mkdir()
    with (folder / f"{name}.jsonl").open("w") as f:
        for i, n in enumerate(choices_per_doc):
            f.write(json.dumps({"q": f"Item {i}: the word is", "choices": [f"w{j}" for j in range(n)], "gold": 0,
                                "answer": " w0"}) + "\n")
    target = "doc_to_choice: choices\ndoc_to_target: gold" if output_type == "multiple_choice" else \
        "doc_to_target: '{{answer}}'\ntarget_delimiter: ''"
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {name}.jsonl\n"
        f"test_split: test\noutput_type: {output_type}\ndoc_to_text: '{{{{q}}}}'\n{target}\n"
        "metric_list:\n  - metric: acc\n")
    return folder


def test_the_eval_records_each_multiple_choice_tasks_chance_from_its_documents(tmp_path):
    """Through lm-eval with a tiny model: chance is the mean of 1/choices over the documents evaluated
    (2, 4, 4, 5 choices -> 0.325), the shipped demo task's is 1/4, and a loglikelihood task has none."""
    pytest.importorskip("lm_eval")
    import torch
    from _train_util import make_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from engine.evaluation.task_specs import resolve_entry
    from engine.evaluation.tasks import run_tasks

    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer(tmp_path / "tok"))
    cfg = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=256)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    mixed = _local_task(tmp_path / "mc", "mc_mixed", "multiple_choice", [2, 4, 4, 5, 2])  # limit=4: not the 5th
    words = _local_task(tmp_path / "ll", "last_word", "loglikelihood", [1, 1])
    entries = [resolve_entry(str(mixed), None), resolve_entry("experiments/tasks/stdlib_continue", None),
               resolve_entry(str(words), None)]
    tasks, _ = run_tasks(model, tokenizer, entries, num_fewshot=0, limit=4, batch_size=4)
    assert tasks["mc_mixed"]["chance"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 4 + 1 / 5) / 4)
    assert tasks["stdlib_continue"]["chance"] == pytest.approx(0.25)
    assert 0 <= tasks["stdlib_continue"]["acc_mutual_info"] <= 1
    assert "chance" not in tasks["last_word"] and tasks["last_word"]["acc"] in (0.0, 0.5, 1.0)


def test_the_eval_log_says_the_chance_level_once_and_not_as_a_metric():
    pytest.importorskip("lm_eval")
    from engine.evaluation.tasks import metrics_line

    m = {"acc": 0.3, "acc_stderr": 0.02, "acc_mutual_info": 0.262, "acc_mutual_info_stderr": 0.022, "chance": 0.25}
    assert metrics_line("stdlib_continue", m) == "stdlib_continue (chance 0.25): acc 0.3000, acc_mutual_info 0.2620"
    assert metrics_line("last_word", {"acc": 0.5, "acc_stderr": 0.1}) == "last_word: acc 0.5000"


def test_the_model_card_says_the_chance_level_beside_the_task_not_as_a_metric_row():
    from engine.contract.results import ModelResult
    from engine.export import _eval_lines

    tasks = {"stdlib_continue": {"acc": 0.3, "acc_stderr": 0.02, "acc_mutual_info": 0.262,
                                 "acc_mutual_info_stderr": 0.022, "chance": 0.25}}
    card = "\n".join(_eval_lines(ModelResult(raw={"tasks": tasks}), ModelResult(raw={"tasks": tasks})))
    rows = [ln for ln in card.splitlines() if ln.startswith("| stdlib_continue")]
    assert [r.split("|")[2].strip() for r in rows] == ["acc", "acc_mutual_info"]  # no `chance` row
    assert rows[0].startswith("| stdlib_continue (chance 0.25) | acc | 0.3 |") and card.count("chance") == 1


def test_the_tuis_results_tab_marks_a_score_at_chance(tmp_path):
    pytest.importorskip("textual")
    from app.data.compare import results_rows, task_cell

    run = _run_with_results(tmp_path, {
        "teacher": {"acc_mutual_info": 0.44, "acc_mutual_info_stderr": 0.025, "chance": 0.25},
        "distill-depth": {"acc_mutual_info": 0.262, "acc_mutual_info_stderr": 0.022, "chance": 0.25}})
    rows = {r["model"]: r for r in results_rows(run)}
    assert task_cell(rows["distill-depth"], "task.stdlib_continue") == "0.262 (chance)"
    assert task_cell(rows["teacher"], "task.stdlib_continue") == "0.440"
