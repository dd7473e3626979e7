"""Fixtures shared by the torch tests (kept apart from _train_util, which benchmarks import
on machines without pytest)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Autouse in each module that imports it: tiny models run fastest on one thread (2-core CI
    machines stay responsive), with the same arithmetic as the OMP_NUM_THREADS=1 subprocesses."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
