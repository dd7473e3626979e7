"""score_task ranks by the one metric rule of engine.contract.scores, in that metric's direction, and
never scores another task in place of a missing one (lm-eval is faked: no model runs)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.contract import scores
from engine.errors import UserError
from engine.evaluation import tasks
from engine.search.scoring import Scorer, task_scorer

EXP = SimpleNamespace(eval=SimpleNamespace(num_fewshot=0, limit=None, task_batch_size=1), source=None, seed=0)


def _fake_lm_eval(monkeypatch, report) -> None:
    """run_tasks(model, ...) -> report(model): ({task: metrics}, {member: metrics})."""
    monkeypatch.setattr(tasks, "run_tasks", lambda model, *a, **k: report(model))


def test_headline_metric_knows_a_perplexity_is_lower_is_better() -> None:
    assert scores.headline_metric({"word_perplexity": 30.0, "word_perplexity_stderr": 1.0,
                                   "bits_per_byte": 1.2}) == ("word_perplexity", 30.0, False)
    assert scores.headline_metric({"perplexity": 9.0, "acc": 0.4}) == ("acc", 0.4, True)
    assert scores.headline_metric({"perplexity": 9.0, "bleu_x": 3.0}) == ("bleu_x", 3.0, True)
    assert scores.task_score({"word_perplexity": 30.0}) is None  # compare averages accuracies only


def test_a_perplexity_only_task_picks_the_lowest_perplexity(monkeypatch) -> None:
    ppl = {"good": 12.0, "bad": 80.0, "middling": 30.0}
    _fake_lm_eval(monkeypatch, lambda m: ({"wikitext": {"word_perplexity": ppl[m],
                                                        "word_perplexity_stderr": None}}, {}))
    scorer = task_scorer(EXP, "wikitext", tokenizer=None)
    got = {i: scorer.score(m) for i, m in enumerate(ppl)}
    assert scorer.metric == "word_perplexity" and scorer.higher_is_better is False
    assert [list(ppl)[i] for i in scorer.ranked(got)] == ["good", "middling", "bad"]


def test_an_accuracy_task_picks_the_highest(monkeypatch) -> None:
    acc = {"a": 0.3, "b": 0.6}
    _fake_lm_eval(monkeypatch, lambda m: ({"arc_easy": {"acc": acc[m], "perplexity": 5.0}}, {}))
    scorer = task_scorer(EXP, "arc_easy", tokenizer=None)
    got = {i: scorer.score(m) for i, m in enumerate(acc)}
    assert scorer.higher_is_better and [list(acc)[i] for i in scorer.ranked(got)] == ["b", "a"]


def test_a_task_missing_from_lm_evals_results_fails_instead_of_scoring_another(monkeypatch) -> None:
    _fake_lm_eval(monkeypatch, lambda m: ({"arc_easy": {"acc": 0.9}}, {}))
    scorer = task_scorer(EXP, "hellaswag", tokenizer=None)
    with pytest.raises(UserError, match="no results for task 'hellaswag'.*arc_easy"):
        scorer.score("model")


def test_a_group_member_is_found_among_the_subtasks(monkeypatch) -> None:
    _fake_lm_eval(monkeypatch, lambda m: ({"mmlu": {"acc": 0.3}}, {"mmlu_anatomy": {"acc": 0.7}}))
    assert task_scorer(EXP, "mmlu_anatomy", tokenizer=None).score("model") == 0.7


def test_a_local_task_is_looked_up_by_its_yaml_name_not_its_path(monkeypatch) -> None:
    pytest.importorskip("lm_eval")
    _fake_lm_eval(monkeypatch, lambda m: ({"other": {"acc": 0.9}, "stdlib_lastword": {"acc": 0.2}}, {}))
    scorer = task_scorer(EXP, "experiments/tasks/stdlib_lastword/stdlib_lastword.yaml", tokenizer=None)
    assert scorer.score("model") == 0.2


def test_distill_plus_loss_sums_the_two_ranks_and_breaks_ties_by_the_loss() -> None:
    scorer = Scorer("distill+loss", lambda m: 0.0)
    scores, losses = {0: 1.0, 1: 2.0, 2: 3.0}, {0: 3.0, 1: 1.0, 2: 2.0}
    # ranks by score 1, 2, 3 and by loss 3, 1, 2: sums 4, 3, 5; neither column alone gives this order
    assert scorer.ranked(scores, losses) == [1, 0, 2]
    assert Scorer("distill", lambda m: 0.0).ranked(scores) == [0, 1, 2]
    assert scorer.ranked({0: 1.0, 1: 2.0}, {0: 2.0, 1: 1.0}) == [1, 0]  # sums 3 and 3: the lower loss
    with pytest.raises(ValueError, match="loss right after pruning"):
        scorer.ranked(scores)
