"""score = "distill-kd": the first score_steps steps of the student's [distill] run itself, scored by the
run's own loss over the last fifth of them. The figure must be the distill stage's: the same schedule, the
same windows, the same losses."""

from __future__ import annotations

import pytest
from _util import one_thread  # noqa: F401  (autouse)
from test_search import _run
from test_search_audit import SEARCH, _toml, root  # noqa: F401  (root: its module-scoped teacher)

from engine.config import ConfigError, loads_experiment
from engine.contract import RunLayout, read_json, read_metrics

DISTILL = """[distill]
steps = 20
global_batch_size = 4
micro_batch_size = 2
val_batches = 2
val_interval = 20
warmup_steps = 3
lr = 3e-3
seed = 7                    # not the experiment's: the score must read the run's own windows
"""


def test_the_kd_score_is_the_distill_runs_own_loss_over_its_last_steps(root, capsys):  # noqa: F811
    exp = loads_experiment(_toml(root, SEARCH + 'score = "distill-kd"\nscore_steps = 10\n', DISTILL), source="a.toml")
    layout = RunLayout(exp.run_dir)
    assert _run(exp, "prune-auto") == 0
    doc = read_json(layout.search_file("prune-auto"))
    assert doc["score"] == "distill-kd"
    chosen = next(c for c in doc["candidates"] if c["chosen"])
    scored = [c["score"] for c in doc["candidates"] if c["score"] is not None]
    assert len(scored) == 3 and len(set(scored)) == 3  # each candidate trained on its own
    # the winner's own distill stage (20 steps): its first 10 are the score's, on the run's schedule
    assert _run(exp, "distill-auto") == 0
    train = {m["step"]: m["loss"] for m in read_metrics(layout.metrics_file("distill-auto"))[0]
             if m.get("split") == "train"}
    assert chosen["score"] == pytest.approx((train[9] + train[10]) / 2, rel=1e-4)
    # ... and not the validation loss "distill" would give
    assert chosen["score"] != pytest.approx(chosen["loss"], rel=1e-3)


def test_a_kd_score_longer_than_the_run_is_refused(root):  # noqa: F811
    with pytest.raises(ConfigError, match=r"score_steps = 21 is more than the 20 steps of its \[distill\] run.*"
                                          r"set score_steps <= 20"):
        loads_experiment(_toml(root, SEARCH + 'score = "distill-kd"\nscore_steps = 21\n', DISTILL), source="a.toml")


@pytest.mark.parametrize(("extra", "steps", "expected"), [
    ("", 20, 20),                        # 50 unless set, capped at the run's steps (20 here)
    ("", 80, 50),
    ("score_steps = 12\n", 80, 12),      # what the user set stays
])
def test_a_kd_score_runs_50_steps_of_the_run_unless_set(root, extra, steps, expected):  # noqa: F811
    distill = DISTILL.replace("steps = 20\n", f"steps = {steps}\n", 1)
    exp = loads_experiment(_toml(root, SEARCH + 'score = "distill-kd"\n' + extra, distill), source="a.toml")
    assert next(p for p in exp.prune if p.method == "search").score_steps == expected
    other = loads_experiment(_toml(root, SEARCH + 'score = "distill"\n', distill), source="a.toml")
    assert next(p for p in other.prune if p.method == "search").score_steps == 20  # the other scores keep 20
