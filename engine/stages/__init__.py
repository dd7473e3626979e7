"""The stage kinds, one module each (prepare, training: finetune/distill, prune, eval): the single
place that knows what a stage is.

Each kind's record (`StageKind`) owns how its stage name is built and parsed, the config sections
it depends on (`sections`: one rule for the config hash, the resume key and Compare's diff), the
file that proves it finished, what a rerun keeps, and the traits the orchestrator, the TUI and
`compare` ask about. The bodies are named by "module:function" and imported only by the stage
process. The [[prune]] methods (depth, width, search) have records too (`PruneMethod`,
prune_methods.py). Torch-free and pydantic-free: the TUI imports it at start-up (through engine.contract).
"""

from engine.stages.eval import EVAL
from engine.stages.kind import StageKind
from engine.stages.names import (
    BY_NAME,
    KINDS,
    OPTIONAL_SECTIONS,
    ORDER,
    is_student_stage,
    kind_of,
    kind_or_none,
    sort_key,
    stage_kind,
    stage_student,
    student_or_none,
)
from engine.stages.plan import planned_stages, resolve_stage, run_order, stage_deps, stage_names
from engine.stages.prepare import PREPARE
from engine.stages.prune import PRUNE
from engine.stages.prune_methods import (
    DEPTH,
    METHOD_NAMES,
    METHODS,
    SEARCH,
    WIDTH,
    PruneMethod,
    method_of,
    method_or_none,
)
from engine.stages.sections import (
    BASE,
    STUDENT_SECTIONS,
    config_sections,
    own_settings,
    stage_settings,
    student_sections,
)
from engine.stages.training import DISTILL, FINETUNE

__all__ = [
    "DEPTH", "METHODS", "METHOD_NAMES", "SEARCH", "WIDTH", "PruneMethod", "method_of", "method_or_none",
    "BASE", "BY_NAME", "DISTILL", "EVAL", "FINETUNE", "KINDS", "OPTIONAL_SECTIONS", "ORDER", "PREPARE", "PRUNE", "STUDENT_SECTIONS", "StageKind",
    "config_sections", "is_student_stage", "kind_of", "kind_or_none", "own_settings", "planned_stages", "resolve_stage", "run_order", "sort_key",
    "stage_deps", "stage_kind", "stage_names", "stage_settings", "stage_student", "student_or_none",
    "student_sections",
]
