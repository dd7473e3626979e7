"""audit = N: a search's best-scored candidates distilled in full, and whether its ranking held."""

from __future__ import annotations

import math
import os
import signal

import pytest
from _prune_util import tiny_model, write_prepared
from _util import one_thread  # noqa: F401  (autouse)
from test_search import SEQ, _run, _tokenizer

from engine.config import ConfigError, loads_experiment
from engine.contract import RunLayout, read_json, read_metrics, read_status
from engine.contract.search_audit import audit_line
from engine.contract.search_doc import read_search_doc, search_doc
from engine.models.hf import save_model
from engine.search.audit import ranks, spearman

SEARCH = """[[prune]]
name = "auto"
method = "search"
target_params = 0.6
tolerance = 0.06
hidden_multiple = 4
ffn_multiple = 4
calibration_samples = 8
calibration_batch_size = 4
top_k = 3
"""

DISTILL = """[distill]
steps = 2
global_batch_size = 4
micro_batch_size = 2
val_batches = 3
val_interval = 1
warmup_steps = 0
"""


def _toml(root, prune: str = SEARCH + "audit = 3\n", distill: str = DISTILL) -> str:
    return f"""
name = "a"
runs_dir = "{root / 'runs'}"
[model]
path = "{root / 'teacher'}"
dtype = "float32"
[data]
dataset = "builtin:stdlib-docs"
seq_length = {SEQ}
{distill}
[launch]
mixed_precision = "no"
{prune}"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    tok = _tokenizer()
    save_model(tiny_model("llama", layers=4, vocab_size=len(tok), tie_word_embeddings=False), root / "teacher", tok)
    write_prepared(root / "runs" / "a" / "prepare", len(tok), SEQ)
    return root


def test_spearman_on_hand_made_rankings_with_ties():
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take the mean rank: x ranks 1, 2.5, 2.5, 4 against 1, 3, 2, 4 -> 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 4], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 5, 2], [0.1, 0.9, 0.5]) == pytest.approx(1.0)  # ranks, not values
    assert spearman([1, 2, 3], [2, 2, 2]) is None and spearman([1], [1]) is None


@pytest.mark.parametrize("prune, distill, message", [
    (SEARCH + "audit = 4\n", DISTILL, "audit: 4 is more than top_k = 3"),
    (SEARCH + "audit = 1\n", DISTILL, "audit: 1 candidate ranks nothing"),
    (SEARCH + "audit = 2\n", "", "there is no [distill]"),
    (SEARCH.replace('"search"\ntarget_params = 0.6', '"depth"\nnum_layers = 2').replace(
        "tolerance = 0.06\nhidden_multiple = 4\nffn_multiple = 4\n", "").replace("top_k = 3\n", "") + "audit = 2\n",
     DISTILL, "audit: a search key in a depth prune"),
], ids=["more-than-top_k", "one", "no-distill", "not-a-search"])
def test_bad_audit_is_one_clear_line(root, prune, distill, message):
    with pytest.raises(ConfigError) as e:
        loads_experiment(_toml(root, prune, distill), source="a.toml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_check_refuses_bad_audit_before_writing_anything(root, tmp_path, capsys):
    from engine.cli import main

    path = tmp_path / "bad.toml"
    path.write_text(_toml(tmp_path, SEARCH + "audit = 5\n"))
    assert main(["check", str(path)]) == 2
    assert "audit: 5 is more than top_k = 3" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_audit_writes_the_correlations_and_the_winner_check(root, capsys):
    exp = loads_experiment(_toml(root), source="a.toml")
    layout = RunLayout(exp.run_dir)
    assert _run(exp, "prune-auto") == 0
    doc = read_json(layout.search_file("prune-auto"))
    a = doc["audit"]
    cands = doc["candidates"]
    top = sorted((i for i, c in enumerate(cands) if c["rank"] is not None), key=lambda i: cands[i]["rank"])[:3]
    assert [c["index"] for c in a["candidates"]] == top and (a["done"], a["requested"], a["steps"]) == (3, 3, 2)
    assert not a["cancelled"] and a["split"] == "validation"  # no test split prepared: the fallback
    assert "spearman_score_validation" not in a and "validation_loss" not in a["candidates"][0]  # judged on it already
    final = {c["index"]: c["final_loss"] for c in a["candidates"]}
    assert all(math.isfinite(v) for v in final.values()) and len(set(final.values())) == 3  # each was trained
    assert a["spearman_screen"] == pytest.approx(spearman([cands[i]["screen_loss"] for i in top],
                                                          [final[i] for i in top]))
    assert a["spearman_score"] == pytest.approx(spearman([cands[i]["score"] for i in top], [final[i] for i in top]))
    best = min(final, key=final.get)
    chosen = next(i for i, c in enumerate(cands) if c["chosen"])
    assert a["best_index"] == best and a["chosen_is_best"] == (best == chosen)
    assert a["gap_nats"] == pytest.approx(final[chosen] - final[best])
    assert audit_line(search_doc(doc)).startswith("audit (3 of 3 best-scored distilled 2 steps each)")
    log = capsys.readouterr().out  # (in process: the stage's log is this process's output)
    assert "audit 3/3" in log and "ETA" in log
    st = read_status(layout.stage_status_file("prune-auto"))  # the status counts the audit's steps
    assert (st["state"], st["step"], st["total_steps"]) == ("succeeded", 6, 6) and st["step_s"] > 0
    # the full recipe on the distill stage's own tokens: the winner's audit ends where distill-auto ends
    assert _run(exp, "distill-auto") == 0
    val = [m["loss"] for m in read_metrics(layout.metrics_file("distill-auto"))[0] if m.get("split") == "val"]
    assert final[chosen] == pytest.approx(val[-1], rel=1e-4)


def test_the_audit_judges_on_the_test_split_the_search_never_saw(tmp_path, capsys):
    from engine.evaluation.loss import evaluate_loss
    from engine.models.hf import load_model
    from engine.training.batches import validation_batches

    tok = _tokenizer()
    save_model(tiny_model("llama", layers=4, vocab_size=len(tok), tie_word_embeddings=False), tmp_path / "teacher", tok)
    write_prepared(tmp_path / "runs" / "a" / "prepare", len(tok), SEQ, test=6)
    exp = loads_experiment(_toml(tmp_path, SEARCH + "audit = 2\n"), source="a.toml")
    layout = RunLayout(exp.run_dir)
    assert _run(exp, "prune-auto") == 0 and _run(exp, "distill-auto") == 0
    a = read_json(layout.search_file("prune-auto"))["audit"]
    assert a["split"] == "test" and "judged on the test split" in capsys.readouterr().out
    assert "Spearman with the final test loss" in audit_line(read_search_doc(layout.search_file("prune-auto")))
    chosen = next(c for c in a["candidates"] if c["rank"] == 1)
    # the distilled winner, read back, has the audit's loss on the test windows and not on validation's
    model = load_model(layout.model_dir("distill-auto"), dtype="float32")
    on = {s: evaluate_loss(model, validation_batches(layout.data_dir, SEQ, exp.distill, 0, 1, model.device, print, s))
          for s in ("test", "validation")}
    assert chosen["final_loss"] == pytest.approx(on["test"], rel=1e-4)
    assert chosen["final_loss"] != pytest.approx(on["validation"], rel=1e-3)
    # and on the validation split the search scored on, beside it: the order held there too, or not
    assert chosen["validation_loss"] == pytest.approx(on["validation"], rel=1e-4)
    seen = {c["index"]: c["validation_loss"] for c in a["candidates"]}
    order = sorted(seen, key=lambda i: next(c["rank"] for c in a["candidates"] if c["index"] == i))
    assert a["spearman_score_validation"] == pytest.approx(spearman(list(range(len(order))), [seen[i] for i in order]))
    assert "(on the validation split it scored on: score " in audit_line(read_search_doc(layout.search_file("prune-auto")))


def test_a_cancel_mid_audit_keeps_the_search_result(root, monkeypatch, capsys):
    from engine.training.step import Trainer

    exp = loads_experiment(_toml(root, SEARCH.replace('"auto"', '"cut"') + "audit = 3\n"), source="a.toml")
    layout = RunLayout(exp.run_dir)
    real = Trainer.step

    def step_then_cancel(self, *a, **k):  # a cancel lands during the first candidate's first step
        out = real(self, *a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "step", step_then_cancel)
    assert _run(exp, "prune-cut") == 0
    doc = read_json(layout.search_file("prune-cut"))
    assert any(c["chosen"] for c in doc["candidates"]) and (layout.model_dir("prune-cut") / "config.json").exists()
    assert doc["audit"]["cancelled"] and doc["audit"]["done"] == 0
    assert "audit cancelled (SIGTERM) after 0 of 3 candidates" in capsys.readouterr().out


def test_compare_prints_the_audit(root):
    from rich.console import Console

    from engine.compare import compare

    exp = loads_experiment(_toml(root), source="a.toml")
    layout = RunLayout(exp.run_dir)
    if "audit" not in (read_json(layout.search_file("prune-auto")) or {}):  # run alone: audit it here
        assert _run(exp, "prune-auto") == 0
    layout.experiment_file.write_text(_toml(root))  # (what `run` writes: compare reads the run's experiment)
    console = Console(record=True, width=200)
    compare([exp.run_dir], chart=False, console=console)
    text = console.export_text()
    line = audit_line(read_search_doc(layout.search_file("prune-auto")))
    assert f"search auto: {line}" in text
    table = text[text.index(line):].splitlines()[1:]
    chosen = [r for r in table if "chosen" in r]
    assert len(chosen) == 1 and chosen[0].split()[0] == "1"
    assert sum("best after distillation" in r for r in table) == 1
    assert f"### search auto: {line}" in (exp.run_dir / "report.md").read_text()
    # the TUI's Compare: the Search tab's heading carries the audit line under the search's title
    from app.screens.compare import decide_data

    (heading, _, name), = decide_data([exp.run_dir])[3]
    assert name == "auto" and heading.splitlines()[1].strip() == line


def test_check_describes_the_audit_and_its_memory(root, capsys):
    from engine.cli import main

    path = root / "a.toml"
    path.write_text(_toml(root))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("audit of prune-auto: after the search, the 3 best-scored candidates are each distilled with the "
            "[distill] recipe on the same tokens: 3 x 2 = 6 training steps") in out
    path.write_text(_toml(root, SEARCH + "audit = 3\naudit_seeds = 2\n"))
    assert main(["check", str(path)]) == 0
    assert ("the 3 best-scored candidates are each distilled with the [distill] recipe on the same tokens, 2 times "
            "each (seeds): 6 x 2 = 12 training steps") in capsys.readouterr().out
    from engine.resources.plan import experiment_shapes, stage_need

    exp = loads_experiment(_toml(root), source="a.toml")
    shapes = experiment_shapes(exp)
    audited = stage_need(exp, shapes, "prune-auto", 1, False)
    plain = stage_need(loads_experiment(_toml(root, SEARCH), source="a.toml"), shapes, "prune-auto", 1, False)
    assert audited.total == max(plain.total, stage_need(exp, shapes, "distill-auto", 1, False).total) > plain.total


def test_a_distill_score_counts_its_training_at_the_micro_batch_it_used(root):
    """A search scored by a short distillation trains candidates beside the teacher even without an audit
    (a SmolLM2 search predicted 7.0 GiB and peaked at 30.2 when only the audit was counted, at the
    calibration batch size): the prune stage's need is the distill stage's at the micro-batch given."""
    from engine.resources.plan import experiment_shapes, stage_need

    loss = loads_experiment(_toml(root, SEARCH), source="a.toml")
    scored = loads_experiment(_toml(root, SEARCH + 'score = "distill"\nscore_steps = 2\n'), source="a.toml")
    shapes = experiment_shapes(scored)
    for micro in (None, 4):
        need = stage_need(scored, shapes, "prune-auto", 1, True, micro)
        assert need.total == stage_need(scored, shapes, "distill-auto", 1, True, micro).total
        assert need.total > stage_need(loss, shapes, "prune-auto", 1, True, micro).total
    assert stage_need(scored, shapes, "prune-auto", 1, True, 4).total > stage_need(scored, shapes, "prune-auto", 1,
                                                                                    True, 1).total


def test_a_loss_scored_search_predicts_its_audit_at_the_micro_batch_the_audit_trained_with(root, monkeypatch,
                                                                                          capsys):
    """micro_batch_size = "auto": the stage predicts its audit before any candidate has chosen a size (on CUDA the
    least), and a loss-scored search never predicted again (SmolLM2 on an H100: "predicted 2.82 GiB", 18.98
    measured with the audit). The audit now says the size it trained with, and the prediction follows. Here
    "auto" searches under the fault injection, which lets a try hold at most 2 samples of the 4."""
    from engine.resources.plan import experiment_shapes, stage_need
    from engine.training.micro_batch import FIT_ENV

    monkeypatch.setenv(FIT_ENV, "2")
    auto = DISTILL.replace("micro_batch_size = 2", 'micro_batch_size = "auto"')
    exp = loads_experiment(_toml(root, SEARCH + "audit = 2\n", auto), source="a.toml")
    assert _run(exp, "prune-auto") == 0
    log = capsys.readouterr().out
    shapes = experiment_shapes(exp)
    first, audit = (stage_need(exp, shapes, "prune-auto", 1, False, m) for m in (None, 2))
    assert audit.total != first.total  # (else the line below would not be written again)
    assert f"memory: predicted {first.describe()}" in log
    assert f"memory: predicted at the audit's micro-batch 2: {audit.describe()}" in log


def test_a_search_student_is_predicted_at_its_most_demanding_candidate(root):
    """A search student may become any candidate: at a large micro-batch the deepest (the most activation bytes a
    token) holds more than the largest by parameters, which the prediction used alone (a SmolLM2 search's audit
    of a 29-layer candidate peaked 5% above it, H100). The training need is the larger of the two."""
    from engine.config.shape import count_params
    from engine.resources.memory import layer_activation_bytes, train_knobs, training_need
    from engine.resources.plan import experiment_shapes, stage_need

    exp = loads_experiment(_toml(root, SEARCH + 'score = "distill"\nscore_steps = 2\n'), source="a.toml")
    shapes = experiment_shapes(exp)
    largest, deepest = shapes.bounds("auto")  # the test's space has both
    assert count_params(largest) > count_params(deepest)
    assert deepest.num_layers * layer_activation_bytes(deepest, 2) > largest.num_layers * layer_activation_bytes(
        largest, 2)
    k = train_knobs(exp, exp.distill, 1, True, 64)
    each = [training_need("distill-auto", s, shapes.teacher, k, exp.data.seq_length).total for s in (largest, deepest)]
    assert each[1] > each[0]  # at 64 sequences the deepest needs more
    for stage in ("distill-auto", "prune-auto"):
        assert stage_need(exp, shapes, stage, 1, True, 64).total == each[1]
    small = train_knobs(exp, exp.distill, 1, True, 1)  # at one sequence the weights decide: the largest
    one = [training_need("distill-auto", s, shapes.teacher, small, exp.data.seq_length).total for s in (largest, deepest)]
    assert stage_need(exp, shapes, "distill-auto", 1, True, 1).total == max(one)


def test_check_says_at_what_micro_batch_a_search_trains_its_candidates(root, capsys):
    """micro_batch_size = "auto": the short distillation and the audit pick their micro-batch as the distill stage
    does, so `check` says how large it may get and the prune stage's memory then; a loss-scored search trains none."""
    from engine.cli import main

    path = root / "auto.toml"
    search = SEARCH.replace('"auto"', '"fresh"')  # a stage no other test has run: check skips finished ones
    auto = DISTILL.replace("micro_batch_size = 2", 'micro_batch_size = "auto"')
    path.write_text(_toml(root, search + 'score = "distill"\nscore_steps = 2\n', auto))
    assert main(["check", str(path), "--gpu-memory", "80"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("prune-fresh "))
    assert "its candidates train at micro_batch_size auto: up to 4 predicted to fit (~" in line
    path.write_text(_toml(root, search, auto))
    assert main(["check", str(path), "--gpu-memory", "80"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("prune-fresh "))
    assert "candidates train" not in line


def test_audit_summary_orients_a_higher_is_better_score_and_measures_the_gap():
    from engine.search.audit import audit_summary

    def cand(rank, screen, score):
        return {"shape": {"num_layers": 2, "hidden_size": 8, "ffn_hidden_size": 8, "num_attention_heads": 2,
                          "num_key_value_heads": 1}, "rank": rank, "chosen": rank == 1, "screen_loss": screen,
                "score": score}

    # a task score (higher is better) that ranked them 1, 2, 3; the distillation put rank 2 first
    doc = {"higher_is_better": True, "candidates": [cand(None, 9.0, None), cand(2, 4.0, 0.5), cand(1, 5.0, 0.6),
                                                     cand(3, 3.0, 0.4)]}
    a = audit_summary(doc, {2: 2.5, 1: 2.4, 3: 3.0}, {1: 1.0, 2: 1.0, 3: 2.0}, steps=5, requested=3)
    assert [c["index"] for c in a["candidates"]] == [2, 1, 3] and [c["final_rank"] for c in a["candidates"]] == [2, 1, 3]
    assert a["spearman_score"] == pytest.approx(0.5)  # -score ranks 1, 2, 3 against losses 2, 1, 3
    assert a["spearman_screen"] == pytest.approx(-0.5)  # screen 5, 4, 3 against 2.5, 2.4, 3.0
    assert (a["chosen_is_best"], a["best_index"]) == (False, 1) and a["gap_nats"] == pytest.approx(0.1)
    assert a["seconds"] == 4.0 and (a["done"], a["cancelled"]) == (3, False)
    assert "0.1000 nats behind rank 2 (2L h8 ffn8 2/1)" in audit_line(search_doc({**doc, "audit": a}))
    assert "noise" not in audit_line(search_doc({**doc, "audit": a}))
    # two seeds whose losses spread by 0.2: the 0.1 gap is within the audit's own noise
    r = audit_summary(doc, {2: 2.5, 1: 2.4, 3: 3.0}, {1: 1.0, 2: 1.0, 3: 2.0}, steps=5, requested=3,
                      repeats={2: [2.4, 2.6], 1: [2.3, 2.5], 3: [2.95, 3.05]})
    assert (r["seeds"], r["noise_nats"], r["spearman_repeat"]) == (2, pytest.approx(0.2), pytest.approx(1.0))
    assert [c["final_losses"] for c in r["candidates"]] == [[2.4, 2.6], [2.3, 2.5], [2.95, 3.05]]
    line = audit_line(search_doc({**doc, "audit": r}))
    assert "behind rank 2 (2L h8 ffn8 2/1), within the audit's own noise" in line
    assert "x 2 seeds" in line and "agrees with itself at +1.00" in line


def test_audit_seeds_distil_each_candidate_again_and_say_how_the_audit_agrees_with_itself(root, capsys):
    exp = loads_experiment(_toml(root, SEARCH.replace('"auto"', '"twice"') + "audit = 2\naudit_seeds = 2\n"),
                           source="a.toml")
    layout = RunLayout(exp.run_dir)
    assert _run(exp, "prune-twice") == 0
    a = read_json(layout.search_file("prune-twice"))["audit"]
    assert a["seeds"] == 2 and a["done"] == 2
    for c in a["candidates"]:
        first, second = c["final_losses"]
        assert first != second  # another data order: another student
        assert c["final_loss"] == pytest.approx((first + second) / 2)
    runs = [c["final_losses"] for c in a["candidates"]]
    assert a["spearman_repeat"] == pytest.approx(spearman([r[0] for r in runs], [r[1] for r in runs]))
    assert a["noise_nats"] == pytest.approx(max(max(r) - min(r) for r in runs))
    line = audit_line(read_search_doc(layout.search_file("prune-twice")))
    assert line.startswith("audit (2 of 2 best-scored distilled 2 steps each x 2 seeds)")
    assert "the audit agrees with itself at" in line and f"{a['noise_nats']:.4f} nats" in line
    from engine.compare.audit import audit_rows

    rows = audit_rows(read_search_doc(layout.search_file("prune-twice")))
    c = a["candidates"][0]
    assert rows[0][4] == f"{c['final_loss']:.4f} ±{abs(c['final_losses'][0] - c['final_losses'][1]) / 2:.4f}"
    log = capsys.readouterr().out
    seed = exp.distill.seed
    assert f"seed {seed}: step 2/2" in log and f"seed {seed + 1}: step 2/2" in log and "(mean of " in log
    st = read_status(layout.stage_status_file("prune-twice"))
    assert (st["step"], st["total_steps"]) == (8, 8)  # 2 candidates x 2 seeds x 2 steps
    # the first seed is the distill stage's own: one seed alone gives the first of the two losses
    one = loads_experiment(_toml(root, SEARCH.replace('"auto"', '"once"') + "audit = 2\n"), source="a.toml")
    assert _run(one, "prune-once") == 0
    b = read_json(RunLayout(one.run_dir).search_file("prune-once"))["audit"]
    assert "seeds" not in b and "final_losses" not in b["candidates"][0]
    assert [c["final_loss"] for c in b["candidates"]] == pytest.approx([c["final_losses"][0] for c in a["candidates"]],
                                                                       rel=1e-5)


def test_a_cached_teacher_audit_equals_the_live_one_and_leaves_its_logits_to_the_distill_stage(root, capsys):
    """[distill] teacher_logits = "cached": the audit stores the teacher's top-k of its windows once and every
    candidate reads them (the same losses as a live top-k audit); distill-<name> then reads the same windows."""
    top = DISTILL + "top_k = 8\n"
    live = loads_experiment(_toml(root, SEARCH.replace('"auto"', '"live"') + "audit = 2\n", top), source="a.toml")
    cached = loads_experiment(_toml(root, SEARCH.replace('"auto"', '"kept"') + "audit = 2\n",
                                    top + 'teacher_logits = "cached"\n'), source="a.toml")
    assert _run(live, "prune-live") == 0
    capsys.readouterr()
    assert _run(cached, "prune-kept") == 0
    log = capsys.readouterr().out
    windows = 2 * 4  # steps x global batch
    assert f"audit: teacher top-8 logits of {windows} windows" in log and f"0 stored, {windows} to compute" in log
    layout = RunLayout(cached.run_dir)
    a = read_json(RunLayout(live.run_dir).search_file("prune-live"))["audit"]["candidates"]
    b = read_json(layout.search_file("prune-kept"))["audit"]["candidates"]
    assert [c["index"] for c in a] == [c["index"] for c in b]
    assert [c["final_loss"] for c in b] == pytest.approx([c["final_loss"] for c in a], rel=1e-5)
    assert _run(cached, "distill-kept") == 0
    assert f"{windows} stored, 0 to compute" in capsys.readouterr().out


def test_audit_seeds_alone_are_refused(root):
    with pytest.raises(ConfigError, match="audit_seeds: repeats the audit's distillations; set audit = N"):
        loads_experiment(_toml(root, SEARCH + "audit_seeds = 2\n"), source="a.toml")


def test_audit_repeat_spearman_averages_the_pairs_of_seeds():
    from engine.search.audit import repeat_spearman

    # three candidates, three seeds: seeds 0 and 1 agree, seed 2 reverses the last two
    losses = [[1.0, 1.1, 1.0], [2.0, 2.1, 3.0], [3.0, 3.1, 2.0]]
    assert repeat_spearman(losses) == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert repeat_spearman([[1.0, 1.0]]) is None


def test_compose_offers_audit_for_a_search_student_only():
    from app.data.form_fields import STUDENT_FIELDS

    assert "audit" in {s.key for s in STUDENT_FIELDS["search"]}
    assert all("audit" not in {s.key for s in STUDENT_FIELDS[m]} for m in ("depth", "width"))


def test_run_detail_search_table_carries_the_audit_line(root):
    from rich.console import Console

    from app.widgets.detail.search_table import search_renderable

    exp = loads_experiment(_toml(root), source="a.toml")
    doc = read_json(RunLayout(exp.run_dir).search_file("prune-auto"))
    if "audit" not in (doc or {}):  # run alone: audit it here
        assert _run(exp, "prune-auto") == 0
        doc = read_json(RunLayout(exp.run_dir).search_file("prune-auto"))
    console = Console(record=True, width=400)
    typed = search_doc(doc)
    console.print(search_renderable("prune-auto", typed))
    text = " ".join(console.export_text().split())  # (a table's title wraps to the table's width)
    assert " ".join(audit_line(typed).split()) in text


def test_compare_on_a_damaged_search_json_is_one_line_and_exit_2(root, tmp_path, capsys):
    """A hand-edited search.json (a candidate without a shape) used to stop `compare` with a traceback."""
    import json
    import shutil

    from engine.cli import main

    exp = loads_experiment(_toml(root), source="a.toml")
    layout = RunLayout(exp.run_dir)
    if read_json(layout.search_file("prune-auto")) is None:  # run alone: search here
        assert _run(exp, "prune-auto") == 0
    layout.experiment_file.write_text(_toml(root))
    run = tmp_path / "a"
    shutil.copytree(exp.run_dir, run)
    search = RunLayout(run).search_file("prune-auto")
    doc = json.loads(search.read_text())
    chosen = next(i for i, c in enumerate(doc["candidates"]) if c["chosen"])  # one every table shows
    del doc["candidates"][chosen]["shape"]["num_layers"]
    search.write_text(json.dumps(doc))
    assert main(["compare", str(run), "--no-chart", "--out", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"search.json: candidate {chosen}: its shape has no num_layers" in err[0]
    assert "rerun the stage that wrote it" in err[0] and "Traceback" not in err[0]
