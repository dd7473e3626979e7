"""The [[prune]] methods' records (engine/stages/prune_methods.py): the schema, Compose and the shape
planning read them, and they agree with the schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.config import ConfigError, key_spec
from engine.config.prune_schema import PruneConfig
from engine.config.shape import Shape, layer_selection, student_shape
from engine.stages import DEPTH, METHOD_NAMES, METHODS, SEARCH, WIDTH, PruneMethod, method_of, method_or_none

ROOT = Path(__file__).resolve().parent.parent


def test_the_schema_literal_lists_the_records_in_their_order():
    assert key_spec("prune", "method").choices == METHOD_NAMES == ("depth", "width", "search")


def test_method_of_and_method_or_none():
    assert method_of("width") is WIDTH
    assert all(isinstance(m, PruneMethod) for m in METHODS)
    assert method_or_none("nope") is None and method_or_none(None) is None and method_or_none(["depth"]) is None
    with pytest.raises(ConfigError, match="depth, width, search"):
        method_of("nope")


def test_each_key_of_a_record_is_a_schema_key():
    keys = set(PruneConfig.model_fields)
    for m in METHODS:
        assert set(m.targets + m.fields + m.accepts) <= keys, m.name
        assert set(dict(m.recipe)) <= set(m.fields), m.name
        assert m.halves is None or m.halves in m.fields
    assert {m.selection for m in METHODS} <= set(key_spec("prune", "selection").choices)


def test_the_traits_the_branches_asked():
    assert [m.name for m in METHODS if m.searches] == ["search"]
    assert [m.name for m in METHODS if m.layers_only] == ["depth"]
    assert (DEPTH.selection, WIDTH.selection, SEARCH.selection) == ("block-influence", "lm-loss", "lm-loss")
    assert [m.name for m in METHODS if m.recipe_hidden] == ["width"] and WIDTH.recipe_hidden == 3072
    assert [m.name for m in METHODS if m.in_new_form] == ["depth", "width"]
    assert all(m.summary and "\n" not in m.summary for m in METHODS)


def test_layer_selection_defaults_by_method():
    for m in METHODS:
        assert layer_selection(SimpleNamespace(method=m.name, selection=None)) == m.selection
        assert layer_selection(SimpleNamespace(method=m.name, selection="last")) == "last"


@pytest.mark.parametrize(("body", "message"), [
    ({"method": "depth", "num_layers": 2, "hidden_size": 32}, 'hidden_size: a width key in a depth prune; use method = "width"'),
    ({"method": "width", "hidden_size": 32, "target_params": 0.5}, 'target_params: a search key in a width prune; use method = "search"'),
    ({"method": "depth", "num_layers": 2, "target_decode_ms": 3.0}, 'target_decode_ms: a search key in a depth prune'),
    ({"method": "depth", "num_layers": 2, "audit": 2}, 'audit: a search key in a depth prune; use method = "search"'),
    ({"method": "width", "hidden_size": 32, "drop_layers": [1]}, "drop_layers: a width prune drops layers by num_layers"),
    ({"method": "width"}, "ffn_hidden_size: a width prune needs at least one of ffn_hidden_size, hidden_size, "
                          "num_attention_heads, num_key_value_heads"),
    ({"method": "search", "target_params": 0.5, "num_layers": 2}, "num_layers: a search chooses the shape itself"),
    ({"method": "search", "target_params": 0.5, "hidden_size": 32, "drop_layers": [1]},
     "hidden_size: a search chooses the shape itself"),
    ({"method": "depth"}, "drop_layers: a depth prune needs exactly one of drop_layers or num_layers"),
])
def test_a_key_of_another_method_is_refused_as_before(body, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PruneConfig(name="s", **body)


def test_width_takes_num_layers_and_a_search_its_defaults_anywhere():
    assert PruneConfig(name="s", method="width", hidden_size=32, num_layers=2).num_layers == 2
    assert PruneConfig(name="s", method="depth", num_layers=2, tolerance=0.05, top_k=3).top_k == 3


def test_the_shape_is_planned_by_the_records_trait():
    t = Shape(model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4,
              num_kv_heads=2, head_dim=16, tied=True, qkv_bias=False, o_bias=False, mlp_bias=False, qk_norm=False)
    depth = student_shape(t, PruneConfig(name="d", method="depth", num_layers=2), "x")
    assert (depth.method, depth.shape.num_layers, depth.selection) == ("depth", 2, "block-influence")
    width = student_shape(t, PruneConfig(name="w", method="width", ffn_hidden_size=64, num_layers=3), "x")
    assert (width.method, width.shape.intermediate_size, width.num_drop, width.selection) == ("width", 64, 1, "lm-loss")
    with pytest.raises(ConfigError, match="keeps every layer"):
        student_shape(t, PruneConfig(name="d", method="depth", num_layers=4), "x")
    assert student_shape(t, PruneConfig(name="w", method="width", ffn_hidden_size=64, num_layers=4), "x").num_drop == 0
    with pytest.raises(ValueError, match="no single shape"):
        student_shape(t, PruneConfig(name="s", method="search", target_params=0.5), "x")


def test_compose_reads_the_records():
    from app.data.compose import RECIPE, is_untouched, new_experiment, student_targets
    from app.data.form_fields import STUDENT_FIELDS, foreign_keys
    from app.widgets.compose.students import STUDENT_KEYS

    assert STUDENT_KEYS == {"depth": "f2", "width": "f3", "search": "f4"}
    assert RECIPE == {"depth": {"num_layers": 16}, "width": {"ffn_hidden_size": 9216}, "search": {"target_params": 0.5}}
    assert new_experiment()["prune"] == [{"name": "depth", "method": "depth", "num_layers": 16},
                                         {"name": "width", "method": "width", "ffn_hidden_size": 9216, "hidden_size": 3072}]
    assert student_targets("depth", (32, 4096, 14336)) == {"num_layers": 16}
    assert student_targets("width", (32, 4096, 14336)) == {"ffn_hidden_size": 7168}
    assert student_targets("search", (32, 4096, 14336)) == {"target_params": 0.5}
    assert is_untouched({"name": "w", "method": "width", "ffn_hidden_size": 9216, "hidden_size": 3072})
    assert not is_untouched({"name": "d", "method": "depth", "num_layers": 16, "hidden_size": 3072})
    for m in METHODS:
        keys = [s.key for s in STUDENT_FIELDS[m.name]]
        assert keys == [*m.fields, "selection", "calibration_samples"]
    assert [s.label for s in STUDENT_FIELDS["depth"]][:2] == ["drop layers", "or keep N"]
    assert [s.label for s in STUDENT_FIELDS["width"]][4] == "layers"
    assert "num_layers" in foreign_keys("search") and "target_params" in foreign_keys("width")


def test_the_records_import_neither_torch_nor_pydantic():
    code = ("import sys, engine.stages.prune_methods; "
            "print(sorted(m for m in ('torch', 'pydantic', 'engine.config') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
