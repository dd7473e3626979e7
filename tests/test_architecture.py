"""Issue 22's structure, kept: stage kinds are not branched on by string outside engine/stages and the
contract, nor [[prune]] methods outside engine/stages, no package cycles, no imports back up the layers, one heartbeat interval, and the TUI reaches
the engine through its facade. The counts come from benchmarks/arch_counts.py (which prints them)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("arch_counts", ROOT / "benchmarks" / "arch_counts.py")
arch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arch)

# Not stage-kind branches, though the counter's pattern matches them: a GPU range ("0-3") and a search's
# score mode (score = "distill": rank candidates by a short distillation).
NOT_KIND_BRANCHES = ('lo, hi = part.split("-", 1)', 'p.score == "distill"')
# Paths still being moved onto the kind records (none now: engine/resources reads the footprint a kind names).
IN_FLIGHT: tuple[str, ...] = ()
# imports that run back up the layers (none: Liger's install check is engine/config/liger_install.py)
KNOWN_BACK_UP: set[tuple[str, str]] = set()
# The facade: the contract (run directories), the config schema, and Compose's one preview of a file.
FACADE = ("engine.contract", "engine.config", "engine.compose_preview")


def test_no_stage_kind_string_branches():
    found = [b for b in arch.stage_branches()
             if not b.startswith(IN_FLIGHT) and not any(s in b for s in NOT_KIND_BRANCHES)]
    assert found == [], "read the kind's record (engine.stages) instead:\n" + "\n".join(found)


def test_the_branch_counter_sees_a_branch(tmp_path, monkeypatch):
    (tmp_path / "engine").mkdir()
    (tmp_path / "app").mkdir()
    (tmp_path / "engine" / "x.py").write_text('if stage_kind(s) == "distill":\n    name = f"prune-{p}"\n')
    monkeypatch.setattr(arch, "ROOT", tmp_path)
    assert len(arch.stage_branches()) == 2


def test_no_prune_method_string_branches():
    found = arch.method_branches()
    assert found == [], "ask the method's record (engine.stages.prune_methods) instead:\n" + "\n".join(found)


def test_the_method_counter_sees_a_branch(tmp_path, monkeypatch):
    for pkg in ("engine", "app", "engine/stages"):
        (tmp_path / pkg).mkdir()
    (tmp_path / "engine" / "x.py").write_text('if p.method == "search":\n    pass\n'
                                              'ok = m not in ("depth", "width")\n'
                                              'if "width" != st["method"]:  # a comment: == "depth"\n    pass\n'
                                              'if row.method == "teacher":\n    pass\n')
    (tmp_path / "app" / "y.py").write_text('wanted = {} if st["method"] != "depth" else {"a": 1}\n')
    (tmp_path / "engine" / "stages" / "prune_methods.py").write_text('if name == "depth":\n    pass\n')
    monkeypatch.setattr(arch, "ROOT", tmp_path)
    assert sorted(b.split(":")[0] + ":" + b.split(":")[1] for b in arch.method_branches()) == [
        "app/y.py:1", "engine/x.py:1", "engine/x.py:3", "engine/x.py:4"]


def test_no_package_cycles_and_no_imports_back_up():
    imports = arch.module_imports()
    assert arch.package_cycles(arch.package_edges(imports)) == []
    ups = {(a, b) for a, b, _ in arch.back_up_imports(imports)}
    assert ups <= KNOWN_BACK_UP, ups - KNOWN_BACK_UP


def test_cycle_finder_sees_a_cycle():
    assert arch.package_cycles({("a", "b"), ("b", "a"), ("b", "c")}) == [("a", "b")]


def test_one_heartbeat_interval():
    defined = [str(p.relative_to(ROOT)) for p in (ROOT / "engine").rglob("*.py")
               if re.search(r"^HEARTBEAT_S\s*=", p.read_text(encoding="utf-8"), re.M)]
    assert defined == ["engine/contract/status.py"]


def test_the_tui_imports_the_engine_through_its_facade():
    reached = {b for a, b, _ in arch.module_imports()
               if a.startswith("app") and b.startswith("engine") and not b.startswith(FACADE)}
    assert reached == set(), f"app/ imports {sorted(reached)}: go through engine.contract"
