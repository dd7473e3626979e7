"""The `prepare` stage: tokenise and pack the data ([data]) into prepare/, described by meta.json.

CPU work (no process per GPU). A rerun leaves its files: it compares its inputs with meta.json
and reuses what still fits.
"""

from engine.stages.kind import StageKind

PREPARE = StageKind(
    name="prepare", body="engine.data.prepare:prepare_stage", output="meta.json", processes=0,
    section=None, optional=False, per_student=False, inputs=(), kept_on_rerun=("*",),
)
