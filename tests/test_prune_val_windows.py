"""The prune stage's validation windows (the step-0 point of a student's curve, and what a search
scores candidates on) follow the config: [eval] batches = None is the whole split."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import engine.data
from engine.config import parse_experiment
from engine.contract import RunLayout
from engine.contract.stage_context import StageContext
from engine.prune.stage_body import val_windows

RAW = {
    "name": "v", "runs_dir": "runs",
    "model": {"path": "org/teacher", "dtype": "float32"},  # never loaded here
    "data": {"dataset": "builtin:stdlib-docs", "seq_length": 8},
    "prune": [{"name": "d", "method": "depth", "num_layers": 1}],
    "eval": {"splits": ["validation"], "micro_batch_size": 2},
}
WINDOWS = 60  # of the fake validation split


class _Split:
    """A validation split of WINDOWS windows, in batches as PackedDataset gives them."""

    def __init__(self, *a, **kw):
        pass

    def __len__(self) -> int:
        return WINDOWS

    def batches(self, size: int, start: int = 0):
        while True:
            yield np.zeros((size, 9), dtype=np.int64)


@pytest.mark.parametrize("batches, expected", [(None, WINDOWS // 2), (3, 3)])
def test_eval_batches_none_is_the_whole_split(tmp_path, monkeypatch, batches, expected):
    monkeypatch.setattr(engine.data, "PackedDataset", _Split)
    raw = copy.deepcopy(RAW)
    raw["eval"]["batches"] = batches
    exp = parse_experiment(raw, source="v")
    ctx = StageContext(exp=exp, stage="prune-d", layout=RunLayout(tmp_path), status=None)
    assert len(val_windows(ctx, 4, torch.device("cpu"))) == expected
