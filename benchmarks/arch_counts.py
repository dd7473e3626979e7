"""Architecture counts (issue 22): stage-kind and prune-method string branches, package cycles, imports
that run back up the layers. `python3 benchmarks/arch_counts.py [-v]` from the repository root.

Packages are `engine.<first part>` (a top-level module counts as its own package) and `app`.
Lazy (function-level) imports count: they are how a back-up import hides.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top: a package may import its own layer and the ones below it. Within a layer, a cycle
# between two packages still counts as a package cycle.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("engine.errors", "engine.disk_space", "engine.hub_id"),
    ("engine.stage_kinds", "engine.stages"),  # the kind records (torch-free; bodies named by string)
    ("engine.config",),
    ("engine.contract",),
    ("engine.data", "engine.models", "engine.shapes"),
    ("engine.distill", "engine.prune", "engine.search", "engine.training", "engine.evaluation",
     "engine.resources"),
    ("engine.orchestration", "engine.compare", "engine.export"),
    ("engine.cli", "engine.__main__", "engine", "engine.compose_preview"),  # compose_preview: the TUI's Compose
    ("app",),
)
LAYER_OF = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}

# A stage name built, parsed or compared by hand: `== "distill"`, `f"prune-{`, `removeprefix("prune-")`,
# `split("-", 1)`, `partition("-")`, `startswith("distill-")`, `in ("prune", "distill")`.
KIND = r"(prepare|finetune|prune|distill|eval)"
BRANCH = re.compile(
    rf'(==|!=) "{KIND}"|in \("{KIND}"|startswith\(\(?"{KIND}|removeprefix\("{KIND}-|f"{KIND}-\{{'
    r'|split\("-", 1\)|partition\("-"\)|"' + KIND + r'-\*'
)
BRANCH_EXEMPT = ("engine/stage_kinds.py", "engine/stages/", "engine/contract/")

# A [[prune]] method compared by hand: `p.method == "search"`, `!= "depth"`, `in ("depth", "width")`,
# `not in ("depth"`, `"width" == m`. The records (engine/stages/prune_methods.py) own those facts.
METHOD = r"(depth|width|search)"
METHOD_BRANCH = re.compile(rf'(==|!=) "{METHOD}"|\bin \("{METHOD}"|"{METHOD}" (==|!=) ')
METHOD_BRANCH_EXEMPT = ("engine/stages/",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    return "app" if parts[0] == "app" else ".".join(parts[:2])


def module_imports() -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import of an engine/app module, lazy ones included."""
    files = [p for pkg in ("engine", "app") for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p) for p in files}
    out = []
    for path in files:
        name = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: set[str] = set()
            if isinstance(node, ast.Import):
                targets = {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules
                targets = subs or {node.module}
            out += [(name, t, node.lineno) for t in targets if t in modules and t != name]
    return out


def package_edges(imports: list[tuple[str, str, int]]) -> set[tuple[str, str]]:
    return {(package_of(a), package_of(b)) for a, b, _ in imports if package_of(a) != package_of(b)
            and package_of(b) != "engine"}  # `engine/__init__` is every engine module's parent


def package_cycles(edges: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs of packages that import each other directly (each pair once)."""
    return sorted((a, b) for a, b in edges if a < b and (b, a) in edges)


def package_sccs(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Groups of packages that reach each other through some chain (more than one package each)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def reach(src: str) -> set[str]:
        seen, todo = set(), [src]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reaches = {p: reach(p) for p in graph}
    groups = {tuple(sorted(q for q in graph if q in reaches[p] and p in reaches.get(q, set()))) for p in graph}
    return sorted(list(g) for g in groups if len(g) > 1)


def back_up_imports(imports: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Imports from a lower layer into a higher one."""
    def layer(m: str) -> int:  # a package not placed in LAYERS yet counts as the engine's top (with cli)
        return LAYER_OF.get(package_of(m), LAYER_OF["engine.cli"])
    return [(a, b, n) for a, b, n in imports
            if package_of(b) != "engine" and layer(b) > layer(a)]


def _branches(pattern: re.Pattern[str], exempt: tuple[str, ...]) -> list[str]:
    out = []
    for pkg in ("engine", "app"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(exempt):
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if pattern.search(code):
                    out.append(f"{rel}:{n}: {line.strip()}")
    return out


def stage_branches() -> list[str]:
    return _branches(BRANCH, BRANCH_EXEMPT)


def method_branches() -> list[str]:
    """Prune-method string branches outside engine/stages (PruneMethod's records)."""
    return _branches(METHOD_BRANCH, METHOD_BRANCH_EXEMPT)


def main() -> None:
    verbose = "-v" in sys.argv
    imports = module_imports()
    edges = package_edges(imports)
    cycles = package_cycles(edges)
    sccs = package_sccs(edges)
    ups = back_up_imports(imports)
    branches = stage_branches()
    print(f"stage-kind string branches outside engine/stages, stage_kinds, contract: {len(branches)}"
          f" in {len({b.split(':')[0] for b in branches})} files")
    if verbose:
        print("\n".join("  " + b for b in branches))
    methods = method_branches()
    print(f"prune-method string branches outside engine/stages: {len(methods)}"
          f" in {len({b.split(':')[0] for b in methods})} files")
    if methods:
        print("\n".join("  " + b for b in methods))
    print(f"package cycles (pairs importing each other directly): {len(cycles)}")
    print("\n".join(f"  {a} <-> {b}" for a, b in cycles))
    print(f"packages in a cycle through some chain: {sum(map(len, sccs))}")
    print("\n".join("  " + " ".join(g) for g in sccs))
    unplaced = sorted({package_of(m) for a, b, _ in imports for m in (a, b)} - LAYER_OF.keys())
    if unplaced:
        print(f"not placed in LAYERS (counted as the engine's top): {', '.join(unplaced)}")
    print(f"imports back up the layers: {len(ups)}")
    if verbose or len(ups) < 40:
        print("\n".join(f"  {a}:{n} -> {b}" for a, b, n in sorted(ups)))


if __name__ == "__main__":
    main()
