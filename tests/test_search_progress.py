"""The search's log ETA is timed per phase: a screened candidate costs a forward pass, a scored one a short
distillation, and an ETA averaged over both promised seconds for minutes of scoring (seen on SmolLM2: "ETA 7s"
before six scores of 23 s each). A fake clock stands for the wall clock."""

from types import SimpleNamespace

from engine.prune.search_part import SearchProgress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _ctx(lines: list[str]) -> SimpleNamespace:
    return SimpleNamespace(stage="prune-search", is_main=False, log=lines.append, progress=lambda *a, **k: None)


def _screened(steps: int, each_s: float) -> tuple[SearchProgress, FakeClock, list[str]]:
    """A search of 10 screened and 4 scored candidates, `steps` of the screen done at `each_s` seconds each."""
    lines: list[str] = []
    clock = FakeClock()
    progress = SearchProgress(_ctx(lines), 10 + 4, clock=clock)
    progress.phase("screen", 10)
    for _ in range(steps):
        clock.now += each_s
        progress.step("screen")
    return progress, clock, lines


def test_the_score_phase_eta_counts_scores_at_their_own_rate():
    progress, clock, lines = _screened(10, 0.1)
    progress.phase("score", 4)
    clock.now += 20.0
    progress.step("score")
    assert lines[-1].endswith("; ETA 60s")  # three scores left at 20 s each (averaged with the screen: 5 s)


def test_while_screening_the_eta_names_the_screen():
    _, _, lines = _screened(4, 0.5)
    assert lines[-1].endswith("; screen ETA 3s")  # six screens left at 0.5 s; the scores' cost is not known yet
