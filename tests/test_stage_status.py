"""StageStatus: the stage's status.json writer and its heartbeat thread."""

from __future__ import annotations

import json

from engine.contract import StageStatus


class _Guarded(dict):
    """A status document that fails a test when changed without the writer's lock."""

    def __init__(self, doc: dict, status: StageStatus):
        super().__init__(doc)
        self.status = status

    def _check(self) -> None:
        assert self.status._lock.locked(), "status document changed outside the lock"

    def __setitem__(self, key, value):
        self._check()
        super().__setitem__(key, value)

    def update(self, *a, **kw):
        self._check()
        super().update(*a, **kw)


def test_every_change_of_the_document_holds_the_lock(tmp_path):
    """The heartbeat thread serialises the document under the lock: a key added meanwhile by start /
    update / finish would raise there ("dictionary changed size") and stop the heartbeats."""
    st = StageStatus(tmp_path / "s", "finetune", "h")
    (tmp_path / "s").mkdir()
    st.doc = _Guarded(st.doc, st)
    st._thread = object()  # no heartbeat thread in this test: the checks run on this one
    st.start(total_steps=3, gpus=[0])
    st.update(step=1, loss=2.5)
    st.finish("succeeded")
    doc = json.loads((tmp_path / "s" / "status.json").read_text())
    assert (doc["state"], doc["step"], doc["loss"], doc["total_steps"]) == ("succeeded", 1, 2.5, 3)
