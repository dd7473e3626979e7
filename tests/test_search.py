"""A search student end to end on a tiny teacher: calibrate once, score candidates pruned in memory,
keep the best; and a depth+width student through prune, distill and eval."""

from __future__ import annotations

import importlib
import json
import math
import signal

import numpy as np
import pytest
import torch
from _prune_util import tiny_model, write_prepared
from _util import one_thread  # noqa: F401  (autouse)
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from engine.config import ConfigError, loads_experiment
from engine.config.shape import count_params, shape_from_config
from engine.contract import RunLayout, read_json, read_metrics, read_status
from engine.evaluation.loss import evaluate_loss
from engine.models.hf import save_model
from engine.orchestration.stage_process import run_stage
from engine.prune import importance as importance_mod
from engine.prune import stage_body
from engine.prune.importance import load_importance
from engine.prune.student import prune_student
from engine.shapes.candidates import search_space
from engine.stages import BY_NAME

WORDS = "the quick brown fox jumps over a lazy dog while seven tiny models learn to count".split()
SEQ = 16


def _tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))],
                            trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _body(kind: str):
    module, fn = BY_NAME[kind].body.split(":")
    return getattr(importlib.import_module(module), fn)


def _run(exp, stage: str) -> int:
    """run_stage installs SIGTERM/SIGINT handlers; put pytest's back afterwards."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return run_stage(exp, stage, _body(stage.split("-", 1)[0]))
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    tok = _tokenizer()
    teacher = tiny_model("llama", layers=4, vocab_size=len(tok), tie_word_embeddings=False)
    with torch.no_grad():  # layer 2 adds nothing: lm-loss selection must drop it first
        teacher.model.layers[2].self_attn.o_proj.weight.zero_()
        teacher.model.layers[2].mlp.down_proj.weight.zero_()
    save_model(teacher, root / "teacher", tok)
    write_prepared(root / "runs" / "t" / "prepare", len(tok), SEQ)
    search = ('method = "search"\ntarget_params = 0.6\ntolerance = 0.06\nhidden_multiple = 4\nffn_multiple = 4\n'
              'calibration_samples = 8\ncalibration_batch_size = 4\n')
    exp = loads_experiment(f"""
name = "t"
runs_dir = "{root / 'runs'}"
[model]
path = "{root / 'teacher'}"
dtype = "float32"
[data]
dataset = "builtin:stdlib-docs"
seq_length = {SEQ}
[distill]
steps = 2
global_batch_size = 4
micro_batch_size = 2
val_batches = 3
val_interval = 1
warmup_steps = 0
[eval]
splits = ["validation"]
batches = 2
micro_batch_size = 3
speed = false
prompts = []
[launch]
mixed_precision = "no"
[[prune]]
name = "search"
{search}top_k = 4
[[prune]]
name = "dsearch"
{search}top_k = 3
score = "distill"
score_steps = 2
[[prune]]
name = "csearch"
{search}top_k = 3
score = "distill+loss"
score_steps = 2
[[prune]]
name = "capped"
{search}top_k = 2
screen_max = 3
screen_batches = 1
[[prune]]
name = "combo"
method = "width"
num_layers = 3
hidden_size = 24
ffn_hidden_size = 32
calibration_samples = 8
calibration_batch_size = 4
""", source="t.toml")
    return exp, RunLayout(exp.run_dir), teacher


@pytest.fixture(scope="module")
def searched(run):
    """prune-search, with spies on the calibration."""
    exp, layout, _ = run
    calls = {"calibrate": 0, "batches": 0}
    calibrate, batch = stage_body.calibrate, importance_mod.Calibrator.run

    def counting_calibrate(*a, **k):
        calls["calibrate"] += 1
        return calibrate(*a, **k)

    def counting_run(self, ids):
        calls["batches"] += 1
        return batch(self, ids)

    mp = pytest.MonkeyPatch()
    mp.setattr(stage_body, "calibrate", counting_calibrate)
    mp.setattr(importance_mod.Calibrator, "run", counting_run)
    try:
        code = _run(exp, "prune-search")
    finally:
        mp.undo()
    return code, calls


def _val_loss(model, layout, exp) -> float:
    from engine.data import PackedDataset

    ds = PackedDataset(layout.data_dir, "validation", SEQ, seed=0)
    return evaluate_loss(model, ds, exp.distill.val_batches, exp.distill.micro_batch_size)


def _rebuilt(exp, layout, stage: str, i: int):
    """Candidate i of a search stage, pruned again here from the teacher on disk and the stage's
    importance.json: what the stage had in memory."""
    teacher = AutoModelForCausalLM.from_pretrained(exp.model.path, dtype=torch.float32).eval()
    t = shape_from_config(teacher.config.to_dict())
    p = exp.prune_by_name(stage.removeprefix("prune-"))
    space = search_space(t, p, "x", exp.model.dtype, SEQ)
    imp = load_importance(layout.importance_file(stage), t)
    return prune_student(teacher, imp, space.student(i)), space


def saved_vocab(layout) -> int:
    return json.loads((layout.stage_dir("prepare") / "meta.json").read_text())["vocab_size"]


def test_search_scores_candidates_within_tolerance_and_keeps_the_best(run, searched):
    exp, layout, _ = run
    code, calls = searched
    assert code == 0 and read_status(layout.stage_status_file("prune-search"))["state"] == "succeeded"
    doc = read_json(layout.search_file("prune-search"))
    target, cands = doc["target"], doc["candidates"]
    assert target["metric"] == "params" and target["fraction"] == 0.6
    assert len(cands) > 4
    for c in cands:
        s = c["shape"]
        shape = shape_from_config({**json.loads((layout.model_dir("prune-search") / "config.json").read_text()),
                                   "num_hidden_layers": s["num_layers"], "hidden_size": s["hidden_size"],
                                   "intermediate_size": s["ffn_hidden_size"], "head_dim": 8})
        assert c["params"] == count_params(shape)
        assert target["lo"] <= c["params"] <= target["hi"]
        assert abs(c["params"] - target["target"]) <= 0.06 * target["target"]
    scored = [c for c in cands if c["score"] is not None]
    assert len(scored) == 4 and sorted(c["rank"] for c in scored) == [1, 2, 3, 4]
    chosen = [c for c in cands if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["rank"] == 1
    assert chosen[0]["score"] == min(c["score"] for c in scored)
    assert all(c["score"] == c["loss"] for c in scored)  # score = "loss"
    # calibrated once: one calibrate() call, one pass over the 8 samples in batches of 4, LM-loss scores
    assert calls == {"calibrate": 1, "batches": 2}
    assert doc["calibration"]["samples"] == 8 and doc["selection"] == "lm-loss"
    assert read_json(layout.importance_file("prune-search"))["layers"]["lm_loss_increase"] is not None
    # only the winner is written
    stage_dir = layout.stage_dir("prune-search")
    assert {p.name for p in stage_dir.iterdir()} <= {"model", "importance.json", "search.json", "metrics.jsonl",
                                                      "status.json", "stdout.log"}
    assert list(stage_dir.rglob("*.safetensors")) == list((stage_dir / "model").glob("*.safetensors"))
    rec = read_metrics(layout.metrics_file("prune-search"))[0][0]
    assert rec["loss"] == pytest.approx(chosen[0]["loss"], rel=1e-6)


def test_the_screen_covers_every_candidate_and_the_best_screened_are_scored(run, searched):
    exp, layout, _ = run
    doc = read_json(layout.search_file("prune-search"))
    cands = doc["candidates"]
    assert all(isinstance(c["screen_loss"], float) and c["screen_seconds"] >= 0 for c in cands)  # every one
    assert sorted(c["screen_rank"] for c in cands) == list(range(1, len(cands) + 1))
    by_screen = sorted(range(len(cands)), key=lambda i: (cands[i]["screen_loss"], i))
    assert {i for i, c in enumerate(cands) if c["score"] is not None} == set(by_screen[:4])  # top_k = 4
    screen = doc["screen"]
    assert (screen["screened"], screen["candidates"], screen["capped"], screen["batches"]) == \
        (len(cands), len(cands), False, 2)
    assert screen["seconds"] == pytest.approx(sum(c["screen_seconds"] for c in cands), abs=0.01)
    # the screen is the loss right after pruning on the first screen_batches validation windows
    i = by_screen[-1]
    model, _ = _rebuilt(exp, layout, "prune-search", i)
    from engine.data import PackedDataset

    ds = PackedDataset(layout.data_dir, "validation", SEQ, seed=0)
    assert evaluate_loss(model, ds, 2, exp.distill.micro_batch_size) == pytest.approx(cands[i]["screen_loss"], rel=1e-5)


def test_search_json_keeps_the_pareto_frontier_of_the_scored_candidates(run, searched):
    """Issue 23 section 4: every scored candidate is on the frontier or beaten by one that is on it
    (no worse loss, params and memory; better on one), and none on it is beaten."""
    _, layout, _ = run
    doc = read_json(layout.search_file("prune-search"))
    cands, f = doc["candidates"], doc["frontier"]
    key = {i: (c["score"], c["params"], c["memory_gb"]) for i, c in enumerate(cands) if c["score"] is not None}

    def beats(j: int, i: int) -> bool:
        return all(a <= b for a, b in zip(key[j], key[i], strict=True)) and key[j] != key[i]

    assert f["axes"] == ["params", "memory_gb"] and f["quality"] == "score" and f["measured"] == len(key) == 4
    assert f["points"] and set(f["points"]) <= set(key)
    assert [cands[i]["params"] for i in f["points"]] == sorted(cands[i]["params"] for i in f["points"])
    assert not any(beats(j, i) for i in f["points"] for j in key)
    assert all(any(beats(j, i) for j in f["points"]) for i in set(key) - set(f["points"]))
    assert f["chosen_on_frontier"] and cands[f["chosen"]]["chosen"]


def test_a_huge_space_screens_exactly_screen_max_and_says_so(run, capsys):
    exp, layout, _ = run
    assert _run(exp, "prune-capped") == 0
    doc = read_json(layout.search_file("prune-capped"))
    cands = doc["candidates"]
    screened = [i for i, c in enumerate(cands) if c["screen_loss"] is not None]
    assert len(screened) == 3 and screened == [0, (len(cands) - 1) // 2, len(cands) - 1]  # deepest .. widest
    assert doc["screen"]["capped"] is True and doc["screen"]["screened"] == 3 and doc["screen"]["batches"] == 1
    best2 = sorted(screened, key=lambda i: (cands[i]["screen_loss"], i))[:2]
    assert [i for i, c in enumerate(cands) if c["score"] is not None] == sorted(best2)
    out = capsys.readouterr().out
    assert f"{len(cands)} candidates, more than screen_max = 3: 3 are screened" in out and "raise screen_max" in out


def test_each_score_is_that_candidate_on_the_same_batches(run, searched):
    """Every score is reproduced by pruning the candidate afresh from the teacher on disk: the same
    batches for each, and the in-memory teacher was never changed by the candidates."""
    exp, layout, _ = run
    doc = read_json(layout.search_file("prune-search"))
    for i, c in enumerate(doc["candidates"]):
        if c["score"] is None:
            continue
        model, space = _rebuilt(exp, layout, "prune-search", i)
        assert space.candidates[i].shape_json() == c["shape"]
        assert _val_loss(model, layout, exp) == pytest.approx(c["loss"], rel=1e-5)


def test_winner_reloads_in_stock_transformers_with_matching_logits(run, searched):
    exp, layout, _ = run
    doc = read_json(layout.search_file("prune-search"))
    best = next(i for i, c in enumerate(doc["candidates"]) if c["chosen"])
    in_memory, _ = _rebuilt(exp, layout, "prune-search", best)
    saved = AutoModelForCausalLM.from_pretrained(layout.model_dir("prune-search"), dtype=torch.float32).eval()
    shape = doc["candidates"][best]["shape"]
    c = saved.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == \
        (shape["num_layers"], shape["hidden_size"], shape["ffn_hidden_size"])
    ids = torch.randint(3, saved_vocab(layout), (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(saved(input_ids=ids).logits, in_memory(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)


def test_distill_scoring_ranks_after_a_short_distillation(run):
    exp, layout, _ = run
    assert _run(exp, "prune-dsearch") == 0
    doc = read_json(layout.search_file("prune-dsearch"))
    assert doc["score"] == "distill"
    scored = [c for c in doc["candidates"] if c["score"] is not None]
    assert len(scored) == 3
    assert all(math.isfinite(c["score"]) and c["score"] != c["loss"] for c in scored)
    chosen = next(c for c in doc["candidates"] if c["chosen"])
    assert chosen["score"] == min(c["score"] for c in scored)
    # the copies were trained, not the candidates' shared tensors: each loss right after pruning is
    # still that of the candidate cut from the untouched teacher
    for i, c in enumerate(doc["candidates"]):
        if c["score"] is not None:
            model, _ = _rebuilt(exp, layout, "prune-dsearch", i)
            assert _val_loss(model, layout, exp) == pytest.approx(c["loss"], rel=1e-5)


def test_distill_plus_loss_ranks_by_the_two_ranks_summed(run):
    """score = "distill+loss": the search's order, and its winner, are the rank of the short
    distillation's loss plus the rank of the loss right after pruning (ties: the lower loss), both
    kept in search.json."""
    from engine.search.audit import ranks

    exp, layout, _ = run
    assert _run(exp, "prune-csearch") == 0
    doc = read_json(layout.search_file("prune-csearch"))
    assert doc["score"] == "distill+loss"
    scored = [c for c in doc["candidates"] if c["score"] is not None]
    assert len(scored) == 3 and all(math.isfinite(c["score"]) and c["score"] != c["loss"] for c in scored)
    total = [a + b for a, b in zip(ranks([c["score"] for c in scored]), ranks([c["loss"] for c in scored]),
                                   strict=True)]
    want = [c["rank"] for _, _, c in sorted(zip(total, [c["loss"] for c in scored], scored, strict=True),
                                            key=lambda t: (t[0], t[1]))]
    assert want == [1, 2, 3]
    chosen = next(c for c in doc["candidates"] if c["chosen"])
    assert chosen["rank"] == 1
    # the frontier's quality is the distill figure, and says so
    from engine.compare.frontier import frontier_title
    from engine.contract.search_doc import search_doc

    typed = search_doc(doc)
    assert typed.quality_name == "distill" and typed.score_name == "distill+loss"
    assert frontier_title("csearch", typed, typed.frontier).startswith("frontier csearch: distill (lower is better)")


def test_depth_and_width_student_end_to_end(run):
    exp, layout, teacher = run
    assert _run(exp, "prune-combo") == 0
    student = AutoModelForCausalLM.from_pretrained(layout.model_dir("prune-combo"), dtype=torch.float32).eval()
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (3, 24, 32)
    imp = read_json(layout.importance_file("prune-combo"))
    lm = imp["layers"]["lm_loss_increase"]
    dropped = min(range(4), key=lambda i: (lm[i], -i))  # the layer whose removal raised the loss least
    kept = [i for i in range(4) if i != dropped]
    # each kept layer's own neuron scores chose its neurons
    hidden = sorted(np.argsort(imp["hidden_channels"])[::-1][:24].tolist())
    for new, old in enumerate(kept):
        best = sorted(np.argsort(imp["mlp_neurons"][old])[::-1][:32].tolist())
        want = teacher.model.layers[old].mlp.down_proj.weight[hidden][:, best]
        torch.testing.assert_close(student.model.layers[new].mlp.down_proj.weight, want, rtol=0, atol=0)
    # reloads with the logits of the in-memory student
    from engine.config.shape import student_shape

    t = shape_from_config(teacher.config.to_dict())
    fresh = AutoModelForCausalLM.from_pretrained(exp.model.path, dtype=torch.float32).eval()
    in_memory = prune_student(fresh, load_importance(layout.importance_file("prune-combo"), t),
                              student_shape(t, exp.prune_by_name("combo"), "x"))
    ids = torch.randint(3, saved_vocab(layout), (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids).logits, in_memory(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)
    # then distill and eval
    assert _run(exp, "distill-combo") == 0
    distilled = AutoModelForCausalLM.from_pretrained(layout.model_dir("distill-combo"), dtype=torch.float32)
    assert distilled.config.num_hidden_layers == 3
    assert _run(exp, "eval") == 0
    models = read_json(layout.results_file)["models"]
    for name in ("prune-combo", "distill-combo"):
        assert math.isfinite(models[name]["splits"]["validation"]["loss"])


def test_compare_shows_the_search_table_with_the_winner_marked(run, searched):
    from rich.console import Console

    from engine.compare import compare
    from engine.config.toml_io import dumps_toml

    exp, layout, _ = run
    layout.experiment_file.write_text(dumps_toml(exp.to_toml_dict()))
    console = Console(record=True, width=160)
    compare([exp.run_dir], chart=False, console=console)
    text = console.export_text()
    doc = read_json(layout.search_file("prune-search"))
    best = next(c for c in doc["candidates"] if c["chosen"])
    assert f"4 of {len(doc['candidates'])} candidates scored by loss" in text
    table = text[text.index("search search:"):]
    for after in ("search dsearch:", "frontier "):  # dsearch's table when it ran too; the frontiers
        table = table[:table.index(after)] if after in table else table
    marked = [line for line in table.splitlines() if "<- chosen" in line]
    assert len(marked) == 1 and marked[0].split()[:4] == ["1", str(best["shape"]["num_layers"]),
                                                          str(best["shape"]["hidden_size"]),
                                                          str(best["shape"]["ffn_hidden_size"])]
    report = (exp.run_dir / "report.md").read_text()
    assert "### search search:" in report and report.count("| yes |") == report.count("### search ")  # one each



def test_distill_score_trains_at_the_micro_batch_the_trainer_picks(run, monkeypatch):
    """micro_batch_size = "auto": the score's steps run at the size the trainer's search picks (one
    micro-batch of 8 here), as the distill stage does. The scorer used to cut each step into micro-batches
    of a fixed 4, which left a 135M candidate waiting on launches (7x slower a step on an H100). And it
    trains eager even where [distill] compiles."""
    from engine.contract.stage_context import StageContext
    from engine.training.step import Trainer

    exp, layout, _ = run
    auto = exp.model_copy(update={"distill": exp.distill.model_copy(
        update={"micro_batch_size": "auto", "global_batch_size": 8, "compile": True})})
    monkeypatch.setenv("SLIMLAB_AUTO_BATCH_FIT", "8")  # the search runs on the CPU, and 8 fits
    sizes: list[list[int]] = []
    launch = Trainer.launch

    def recording(self, micro_batches, lr, cancel=False):
        sizes.append([b.shape[0] for b in micro_batches])
        assert not self.cfg.compile  # eager: a compile per candidate shape would cost more than its steps
        return launch(self, micro_batches, lr, cancel)

    monkeypatch.setattr(Trainer, "launch", recording)
    teacher = AutoModelForCausalLM.from_pretrained(exp.model.path, dtype=torch.float32)
    tok = PreTrainedTokenizerFast.from_pretrained(exp.model.path)
    val = [torch.randint(3, len(tok), (2, SEQ + 1), generator=torch.Generator().manual_seed(0))]
    ctx = StageContext(auto, "prune-dsearch", layout, None)
    scorer = stage_body._scorer(ctx, auto.prune_by_name("dsearch"), teacher, tok, val, torch.device("cpu"))
    score = scorer.score(teacher)
    assert sizes == [[8], [8]]  # score_steps = 2 steps, each one micro-batch of the global 8
    assert math.isfinite(score) and score != evaluate_loss(teacher, val)


def test_score_seeds_average_the_short_distillation_over_data_orders(run):
    """score_seeds = 2: each candidate is distilled from the same copy once per data order ([distill] seed,
    seed + 1), and its score is the mean of the two losses: the same as scoring it once with each order alone."""
    from engine.contract.stage_context import StageContext

    exp, layout, _ = run
    teacher = AutoModelForCausalLM.from_pretrained(exp.model.path, dtype=torch.float32)
    candidate = AutoModelForCausalLM.from_pretrained(exp.model.path, dtype=torch.float32)  # (the trainer freezes the teacher)
    tok = PreTrainedTokenizerFast.from_pretrained(exp.model.path)
    val = [torch.randint(3, len(tok), (2, SEQ + 1), generator=torch.Generator().manual_seed(0))]

    def score_with(seed: int, seeds: int) -> float:  # the windows are the distill stage's: its seed's
        e = exp.model_copy(update={"distill": exp.distill.model_copy(update={"seed": seed})})
        p = e.prune_by_name("dsearch").model_copy(update={"score_seeds": seeds})
        torch.manual_seed(0)
        return stage_body._scorer(StageContext(e, "prune-dsearch", layout, None), p, teacher, tok, val,
                                  torch.device("cpu")).score(candidate)

    seed = exp.distill.seed
    first, second = score_with(seed, 1), score_with(seed + 1, 1)
    assert first != second  # another data order is another score
    assert score_with(seed, 2) == pytest.approx((first + second) / 2, rel=1e-6)


def test_a_scored_candidate_leaves_no_trainer_behind(run):
    """Each short distillation unhooks its Trainer from the scorer's accelerator, which lives as long as the
    search: a hooked one kept its copy of the candidate, gradients and optimizer state alive, one more per
    scored candidate (benchmarks/RESULTS.md: on an H100 the SmolLM2 search peaked ~12 GiB above its prediction)."""
    import gc

    from engine.contract.stage_context import StageContext
    from engine.training.step import Trainer

    exp, layout, _ = run
    teacher = AutoModelForCausalLM.from_pretrained(exp.model.path, dtype=torch.float32)
    candidate = AutoModelForCausalLM.from_pretrained(exp.model.path, dtype=torch.float32)
    tok = PreTrainedTokenizerFast.from_pretrained(exp.model.path)
    val = [torch.randint(3, len(tok), (2, SEQ + 1), generator=torch.Generator().manual_seed(0))]
    scorer = stage_body._scorer(StageContext(exp, "prune-dsearch", layout, None), exp.prune_by_name("dsearch"),
                                teacher, tok, val, torch.device("cpu"))
    for _ in range(2):
        assert math.isfinite(scorer.score(candidate))
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, Trainer)] == []


def test_score_seeds_need_a_distill_score():
    with pytest.raises(ConfigError, match='score_seeds: repeats the short distillation of score = "distill"'):
        loads_experiment('name = "x"\n[model]\npath = "m"\n[data]\ndataset = "builtin:stdlib-docs"\n[distill]\n'
                         'steps = 2\n[[prune]]\nname = "s"\nmethod = "search"\ntarget_params = 0.5\nscore_seeds = 2\n',
                         source="x.toml")
