"""Issue 23 section 4: the Pareto frontier of a search's scored candidates (engine.contract.frontier),
kept in search.json and printed by `compare` with the chosen point marked. Torch-free and fast: hand-made
candidates, and a search.json written by search_document over a real search space (tests/_app_util)."""

from __future__ import annotations

from _app_util import RunWriter

from engine.contract.frontier import frontier
from engine.contract.search_doc import search_doc

PRUNE = [{"name": "depth", "method": "depth", "num_layers": 2}, {"name": "width", "method": "width", "ffn_hidden_size": 64},
         {"name": "auto", "method": "search", "target_params": 0.6}]


def cand(score: float | None, params: int, memory: float | None = None, chosen: bool = False, **speed) -> dict:
    return {"score": score, "params": params, "memory_gb": memory, "chosen": chosen, **speed}


def test_dominated_candidates_are_left_out_and_equal_ones_kept_together():
    cands = [cand(4.0, 100, 1.0, chosen=True),  # 0: the best score
             cand(4.2, 90, 0.9),                # 1: worse, but smaller: on
             cand(4.3, 95, 0.95),               # 2: worse and larger than 1: off
             cand(4.0, 100, 1.0),               # 3: equal to 0: on with it
             cand(4.0, 110, 1.0),               # 4: as good as 0, larger: off
             cand(None, 50, 0.5),               # 5: not scored: not measured
             cand(4.2, 90, 0.95)]               # 6: as 1 but more memory: off
    f = frontier(cands, higher_is_better=False)
    assert f["points"] == [1, 0, 3]  # fewest parameters first
    assert f["axes"] == ["params", "memory_gb"] and f["measured"] == 6
    assert f["chosen"] == 0 and f["chosen_on_frontier"]


def test_a_higher_is_better_score_flips_the_quality_axis():
    cands = [cand(0.50, 100, chosen=False), cand(0.60, 100, chosen=True), cand(0.40, 80)]
    f = frontier(cands, higher_is_better=True)
    assert f["points"] == [2, 1] and f["axes"] == ["params"]  # memory absent everywhere: not an axis
    assert frontier(cands, higher_is_better=False)["points"] == [2]  # 0.40 and smaller beats both


def test_speed_counts_where_measured_and_an_untimed_candidate_cannot_beat_a_timed_one():
    cands = [cand(4.0, 100, decode_ms=5.0),                 # 0: best timed score
             cand(4.1, 100, decode_ms=3.0),                 # 1: worse, faster: on
             cand(4.1, 100),                                # 2: untimed, beaten by 0 on score and params: off
             cand(3.9, 120),                                # 3: best score: on
             cand(4.2, 100, speed={"decode_ms": 3.0}),      # 4: as 1, worse score (speed in its table): off
             cand(4.5, 80, decode_ms=2.0),                  # 5: fastest and smallest: on
             cand(4.4, 80)]                                 # 6: beats 5 on score, but 5's speed is unknown to it
    f = frontier(cands, higher_is_better=False)
    assert f["axes"] == ["params", "decode_ms"]  # memory absent everywhere; speed named where present
    assert f["points"] == [5, 6, 0, 1, 3]
    # a throughput is higher-is-better: the faster prefill keeps a worse-scored candidate on
    g = frontier([cand(4.0, 100, prefill_tokens_per_s=900.0), cand(4.1, 100, prefill_tokens_per_s=1000.0),
                  cand(4.2, 100, prefill_tokens_per_s=950.0)], higher_is_better=False)
    assert g["points"] == [0, 1] and g["axes"] == ["params", "prefill_tokens_per_s"]


def test_frontier_of_an_older_search_json_is_worked_out_and_a_broken_one_replaced():
    cands = [cand(4.0, 100, 1.0, chosen=True), cand(4.2, 90, 0.9), cand(4.3, 95, 0.95)]
    old = {"score": "loss", "higher_is_better": False, "candidates": cands}  # written before the frontier
    assert search_doc(old).frontier.points == (1, 0)
    assert search_doc({**old, "frontier": {"points": [7], "axes": []}}).frontier.points == (1, 0)  # out of range
    kept = {"points": [2], "axes": ["params"]}
    f = search_doc({**old, "frontier": kept}).frontier  # the file's own, as written
    assert (f.points, f.axes, f.measured, f.chosen) == ((2,), ("params",), None, None)
    assert search_doc({"candidates": "?"}) is None  # no document: no frontier
    # a candidate that is not an object keeps its place: the frontier's indices count it
    assert search_doc({**old, "candidates": ["?", *cands]}).frontier.points == (2, 1)


def searched_run(runs) -> tuple[RunWriter, dict]:
    """A run with a depth, a width and a search student, and the search's search.json as the prune
    stage writes it (engine.search.table.search_document over the engine's own candidates for a small
    teacher): 6 of 15 scored, larger ones scoring better, give or take, as pruning less does."""
    from engine.config import PruneConfig
    from engine.config.shape import shape_from_config
    from engine.contract import RunLayout, write_json
    from engine.search.table import search_document
    from engine.shapes.candidates import search_space

    w = RunWriter(runs, "s", students=("depth", "width", "auto"), prune=PRUNE)
    teacher = shape_from_config(dict(model_type="llama", vocab_size=1000, hidden_size=96, intermediate_size=256,
                                     num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=2,
                                     tie_word_embeddings=True))
    p = PruneConfig(name="auto", method="search", target_params=0.6, hidden_multiple=12, ffn_multiple=16, top_k=6)
    space = search_space(teacher, p, "prune[2]", "bfloat16", 64)
    screen = {i: 4.5 + 0.01 * ((7 * i) % 13) for i in space.screened}
    best = sorted(screen, key=lambda i: (screen[i], i))[:space.top_k]
    top = max(c.params for c in space.candidates)
    scores = {i: round(4.0 + (top - space.candidates[i].params) / 1e4 + 0.2 * ((7 * k) % 3), 4)
              for k, i in enumerate(best)}
    ranked = sorted(scores, key=lambda i: (scores[i], i))
    doc = search_document(space, "loss", False, {"kind": "activation"}, ranked, scores, scores,
                          {i: 0.1 for i in scores}, screen, {i: 0.01 for i in screen})
    write_json(RunLayout(w.root).search_file("prune-auto"), doc)
    return w, doc


def _brute_force(cands: list[dict]) -> list[int]:
    """Scored candidates no other scored one beats on (score, params, memory): lower is better."""
    scored = [i for i, c in enumerate(cands) if c["score"] is not None]
    key = {i: (cands[i]["score"], cands[i]["params"], cands[i]["memory_gb"]) for i in scored}
    return [i for i in scored if not any(all(a <= b for a, b in zip(key[j], key[i], strict=True)) and key[j] != key[i]
                                         for j in scored)]


def test_search_document_keeps_the_frontier_and_compare_prints_it_with_the_chosen_point(tmp_path):
    from rich.console import Console

    from engine.compare import compare
    from engine.contract import human_count

    w, doc = searched_run(tmp_path / "runs")
    cands, f = doc["candidates"], doc["frontier"]
    assert sorted(f["points"]) == sorted(_brute_force(cands)) and f["axes"] == ["params", "memory_gb"]
    assert 1 < len(f["points"]) < f["measured"] == sum(c["rank"] is not None for c in cands)
    chosen = next(i for i, c in enumerate(cands) if c["chosen"])
    assert f["chosen"] == chosen and f["chosen_on_frontier"]

    console = Console(record=True, width=160)
    compare([w.root], chart=False, console=console)
    text = console.export_text()
    table = text[text.index("frontier auto: loss (lower is better) against params, memory GiB"):].splitlines()
    rule = next(n for n, line in enumerate(table) if "───" in line)  # under the header
    rows = [line.split() for line in table[rule + 1:rule + 1 + len(f["points"])]]
    assert [r[0] for r in rows] == [human_count(cands[i]["params"]) for i in f["points"]]
    assert [float(r[2]) for r in rows] == [round(cands[i]["score"], 4) for i in f["points"]]
    marked = [r for r in rows if r[-2:] == ["<-", "chosen"]]
    assert marked == [rows[f["points"].index(chosen)]]
    assert "### frontier auto:" in (w.root / "report.md").read_text()


def test_search_json_is_read_once_into_typed_objects_and_an_older_or_damaged_one_defensively(tmp_path):
    """engine.contract.search_doc: the typed document the tables render; keys an older file lacks read
    as None, and a candidate the tables cannot show makes them raise ValueError (the TUI says so)."""
    from engine.contract import RunLayout
    from engine.contract.search_doc import Shape
    from engine.contract.search_table import candidate_cells, read_search, search_rows, title

    w, doc = searched_run(tmp_path / "runs")
    typed = read_search(RunLayout(w.root), "prune-auto")
    assert typed is not None and len(typed.candidates) == len(doc["candidates"])
    assert [c.index for c in typed.candidates] == list(range(len(doc["candidates"])))
    winner = typed.chosen
    assert winner is not None and winner.rank == 1 and typed.scored[0] is winner
    assert isinstance(winner.shape, Shape) and winner.shape.num_layers == doc["candidates"][winner.index]["shape"]["num_layers"]
    assert typed.frontier.points == tuple(doc["frontier"]["points"]) and typed.score == "loss"
    assert typed.target is not None and typed.target.metric == "params" and typed.screen and typed.screen.screened
    assert typed.audit is None and typed.speed is None
    # an older file: no score, target, screen or frontier; a candidate without its screen
    old = search_doc({"candidates": [{"shape": doc["candidates"][0]["shape"], "params": 10, "rank": 1, "score": 4.0,
                                      "chosen": True}]})
    assert old is not None and (old.score, old.target, old.screen, old.audit) == (None, None, None, None)
    assert old.candidates[0].screen_loss is None and old.frontier.points == (0,)
    assert title("auto", old) == "search auto: ?, 1 of 1 candidates scored by loss"
    seeded = search_doc({**doc, "score": "distill+loss", "score_seeds": 3})
    assert seeded is not None and seeded.score_seeds == 3 and old.score_seeds == 1
    assert "candidates scored by distill+loss (mean of 3 data orders), the best of" in title("auto", seeded)
    assert search_rows(old)[0][-1] == "<- chosen"
    # damaged: not a document; a candidate without a (complete) shape or not an object at all
    assert search_doc([]) is None and search_doc({"candidates": {}}) is None
    bad = search_doc({"candidates": [{"shape": {"num_layers": 2}, "params": 1, "rank": 1}, 7]})
    assert bad is not None and bad.candidates[1].is_object is False and bad.candidates[1].rank is None
    for c, why in zip(bad.candidates, ("its shape has no hidden_size", "no shape"), strict=True):
        try:
            candidate_cells(c)
        except ValueError as e:
            assert why in str(e)
        else:
            raise AssertionError("a candidate without a shape has no cells")
