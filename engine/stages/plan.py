"""The stages of an experiment, their order and inputs, and a stage picked by what a user typed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import ConfigError
from engine.stages.names import BY_NAME, KINDS, kind_of, sort_key, stage_kind, stage_student


def stage_names(sections: Mapping[str, Any], students: list[str]) -> list[str]:
    """Stage names in pipeline order, from the sections present and the [[prune]] names."""
    out: list[str] = []
    for k in KINDS:
        if k.optional and sections.get(k.section or "") is None:
            continue
        out += [k.stage(s) for s in students] if k.per_student else [k.stage()]
    return out


def planned_stages(raw: Mapping[str, Any]) -> list[str]:
    """Stage names of a raw (unvalidated) experiment dict, as `Experiment.stages()` gives them."""
    prunes = raw.get("prune") if isinstance(raw.get("prune"), list) else []
    names = [str(p["name"]) for p in prunes if isinstance(p, dict) and p.get("name")]
    sections = {k: v for k, v in raw.items() if isinstance(v, dict)}
    return stage_names(sections, names)


def run_order(planned: list[str], on_disk: list[str]) -> list[str]:
    """A run's stages as readers list them: the planned ones in plan order, and those left on disk by
    an earlier config (prune-old) among their kind's; unknown names last."""
    rank = {s: i for i, s in enumerate(planned)}
    names = list(planned) + [n for n in on_disk if n not in rank]
    return sorted(names, key=lambda n: (sort_key(n)[0], rank.get(n, len(planned)), n))


def stage_deps(stages: list[str]) -> dict[str, list[str]]:
    """The stages each stage reads from, among `stages` (a pipeline from `stage_names`)."""
    deps: dict[str, list[str]] = {}
    for i, s in enumerate(stages):
        k = kind_of(s)
        if "*" in k.inputs:
            deps[s] = stages[:i]
            continue
        wanted = {BY_NAME[d].stage(stage_student(s)) if BY_NAME[d].per_student else d for d in k.inputs}
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
