"""The stage kinds, one record each: the single place that knows what a stage is.

A stage name is `<kind>` (prepare, finetune, eval) or `<kind>-<student>` (prune-width,
distill-width). Everything that needs stage knowledge reads it here: the CLI (which body a
stage process runs), the planner (inputs, the file that proves a stage finished, what to keep
on a rerun), the launcher (processes per stage, multi-node), the TUI (the planned stages and
their order). Torch-free and pydantic-free: the TUI imports it at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError


@dataclass(frozen=True)
class StageKind:
    name: str
    body: str  # "module:function" of the stage body, a function of a StageContext
    output: str  # the file, relative to the stage directory, whose presence proves the stage finished
    processes: int | None  # processes when GPUs are present: None = every GPU of the stage (DDP/FSDP)
    section: str | None  # the experiment section that switches the kind on (None: always there)
    per_student: bool  # one stage per [[prune]] student
    inputs: tuple[str, ...]  # kinds it reads; a per-student input is the same student's; "*": every earlier stage

    @property
    def training(self) -> bool:
        """Trains a model: keeps its checkpoints across reruns and may span several machines."""
        return self.processes is None

    @property
    def multi_node(self) -> bool:
        return self.processes is None


# In pipeline order. Tokenising is CPU work (no process per GPU); calibration/pruning and
# evaluation run on one GPU (an 8B model fits one 80 GB card in bf16); training needs DDP/FSDP.
KINDS: tuple[StageKind, ...] = (
    StageKind("prepare", "engine.data:prepare_stage", "meta.json", 0, None, False, ()),
    StageKind("finetune", "engine.training.stage_bodies:finetune_stage", "model/config.json", None, "finetune", False,
              ("prepare",)),
    StageKind("prune", "engine.prune.stage_body:prune_stage", "model/config.json", 1, None, True,
              ("prepare", "finetune")),
    StageKind("distill", "engine.training.stage_bodies:distill_stage", "model/config.json", None, "distill", True,
              ("prepare", "finetune", "prune")),
    StageKind("eval", "engine.evaluation.stage_body:eval_stage", "results.json", 1, "eval", False, ("*",)),
)
BY_NAME: dict[str, StageKind] = {k.name: k for k in KINDS}
ORDER: dict[str, int] = {k.name: i for i, k in enumerate(KINDS)}


def stage_kind(stage: str) -> str:
    """`distill-width` -> `distill` (stage names are `<kind>` or `<kind>-<student>`)."""
    return stage.split("-", 1)[0]


def stage_student(stage: str) -> str:
    """`distill-width` -> `width`: the [[prune]] student a prune or distill stage belongs to."""
    return stage.split("-", 1)[1]


def kind_of(stage: str) -> StageKind:
    return BY_NAME[stage_kind(stage)]


def sort_key(stage: str) -> tuple[int, str]:
    """Pipeline order for stage names found on disk (unknown kinds last)."""
    return ORDER.get(stage_kind(stage), len(KINDS)), stage


def stage_names(sections: Mapping[str, Any], students: list[str]) -> list[str]:
    """Stage names in pipeline order, from the sections present and the [[prune]] names."""
    out: list[str] = []
    for k in KINDS:
        if k.section is not None and sections.get(k.section) is None:
            continue
        out += [f"{k.name}-{s}" for s in students] if k.per_student else [k.name]
    return out


def planned_stages(raw: Mapping[str, Any]) -> list[str]:
    """Stage names of a raw (unvalidated) experiment dict, as `Experiment.stages()` gives them."""
    prunes = raw.get("prune") if isinstance(raw.get("prune"), list) else []
    names = [str(p["name"]) for p in prunes if isinstance(p, dict) and p.get("name")]
    sections = {k: v for k, v in raw.items() if isinstance(v, dict)}
    return stage_names(sections, names)


def stage_deps(stages: list[str]) -> dict[str, list[str]]:
    """The stages each stage reads from, among `stages` (a pipeline from `stage_names`)."""
    deps: dict[str, list[str]] = {}
    for i, s in enumerate(stages):
        k = kind_of(s)
        if "*" in k.inputs:
            deps[s] = stages[:i]
            continue
        wanted = {f"{d}-{stage_student(s)}" if BY_NAME[d].per_student else d for d in k.inputs}
        deps[s] = [d for d in stages if d in wanted]
    return deps


def resolve_stage(stages: list[str], name: str | None, *, source: str, flag: str, kind: str | None = None) -> str:
    """A stage of this pipeline from what a user typed: `prune-width`, `width`, `finetune`.

    `kind` limits the choice (`slimlab-engine prune FILE --stage width`); without a name, the
    kind's only stage.
    """
    candidates = [s for s in stages if kind is None or stage_kind(s) == kind]
    if name is None:
        if not candidates:
            raise ConfigError(f"{source}: no {kind} stage in this file; add the [{kind}] section")
        if len(candidates) > 1:
            raise ConfigError(f"{source}: several {kind} stages; pick one with {flag} ({', '.join(candidates)})")
        return candidates[0]
    if name in candidates:
        return name
    matches = [s for s in candidates if s.split("-", 1)[-1] == name or stage_kind(s) == name]
    if len(matches) == 1:
        return matches[0]
    hint = f"'{name}' matches {', '.join(matches)}" if matches else f"no stage '{name}'"
    raise ConfigError(f"{source}: {flag}: {hint}; stages: {', '.join(stages)}")
