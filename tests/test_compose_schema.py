"""Compose reads its fields from the schema (issue 22, item 5) and the Compose frictions of issue 24:
defaults, choices and bounds come from the pydantic models (engine.config.key_spec), a new experiment
follows a changed default, placeholders are worded and drawn as placeholders, a scratch teacher's
placeholders are its model_type's defaults, a hidden size the default heads do not divide is flagged,
and a student added once the teacher is known is sized from it."""

from __future__ import annotations

import pytest
from _app_util import make_app, run_async, show, teacher_dir, wait_for

from app.data import form_fields as ff
from app.data.compose import new_experiment, new_student
from engine.config import ConfigError, FinetuneConfig, key_spec, loads_experiment
from engine.config.arch import check_arch

TABLES = ("TOP", "MODEL", "SCRATCH", "DATA", "TRAIN", "DISTILL_EXTRA", "EVAL", "LAUNCH", "DEPTH", "WIDTH", "SEARCH")
PLACEHOLDER_WORDS = ("default", "e.g.", "empty:", "required")


def all_specs() -> list[ff.FieldSpec]:
    return [s for t in TABLES for s in getattr(ff, t)]


# ---- the schema, read ---------------------------------------------------------------------------


def test_key_spec_reads_defaults_choices_and_bounds_from_the_models():
    lr = key_spec("finetune", "lr")
    assert (lr.kind, lr.default, lr.lower, lr.lower_open, lr.upper, lr.upper_open) == ("float", 1e-4, 0.0, True, 1.0, False)
    assert key_spec("data", "test_fraction").bounds_text() == "0 to < 0.5"
    assert key_spec("launch", "strategy").choices == ("ddp", "fsdp")
    assert key_spec("prune", "method").kind == "choice" and key_spec("prune", "method").required
    assert key_spec("prune", "axes").kind == "strs" and "num_layers" in key_spec("prune", "axes").choices
    assert key_spec("finetune", "micro_batch_size").kind == "auto_int"
    assert key_spec("launch", "gpus").kind == "gpus" and key_spec("prune", "target_params").kind == "size"
    assert key_spec("eval", "splits").default == ["validation", "test"]  # a default_factory, called


def test_every_field_says_the_schemas_default_and_offers_its_choices():
    """No copy to drift: every field but a scratch teacher's (transformers' keys: the tests below) is read
    from the schema; a choice offers exactly its Literal values, a placeholder "default X" is its default."""
    assert [s.key for s in all_specs() if s.section is None] == [s.key for s in ff.SCRATCH if s.section is None]
    assert all(s.key.startswith("model.arch.") for s in all_specs() if s.section is None)
    for spec in all_specs():
        if spec.section is None:
            continue
        ks = key_spec(spec.section, spec.key.rpartition(".")[2])
        if spec.kind == "choice":
            assert spec.choices == ks.choices, spec
            if ks.default is not None:
                assert spec.blank == f"default {ks.default}", spec
        elif spec.placeholder.startswith("default ") and not spec.placeholder.startswith("default:"):
            assert spec.placeholder.startswith(f"default {ff.format_field(spec.kind, ks.default)}"), spec


def test_a_new_experiment_follows_a_changed_schema_default(monkeypatch):
    """Its training keys were typed into new_experiment (steps 30, lr 1e-4, ...): a default changed in the
    schema now changes a new form too."""
    monkeypatch.setattr(FinetuneConfig.model_fields["steps"], "default", 77)
    monkeypatch.setattr(FinetuneConfig.model_fields["lr"], "default", 3e-4)
    raw = new_experiment()
    assert raw["finetune"]["steps"] == 77 and raw["finetune"]["lr"] == 3e-4
    assert raw["model"]["dtype"] == key_spec("model", "dtype").default
    assert raw["launch"] == {"gpus": "all", "strategy": "ddp"}


def test_placeholders_are_worded_as_placeholders():
    """"my-experiment", "runs", "16-31", "64", "1" read as typed values in an empty field: every
    placeholder now starts with default / e.g. / empty: / required."""
    bare = [(s.key, s.placeholder) for s in all_specs()
            if s.kind not in ("choice", "bool") and not s.placeholder.startswith(PLACEHOLDER_WORDS)]
    assert bare == []


# ---- a scratch teacher: transformers' defaults ----------------------------------------------------


def test_a_hidden_size_the_default_heads_do_not_divide_is_flagged():
    """hidden 190 with heads left out built 32 heads of head_dim 5 (transformers 5 rejects it later)."""
    with pytest.raises(ValueError, match=r"arch.hidden_size: 190 is not a multiple of num_attention_heads = 32"):
        check_arch({"model_type": "llama", "hidden_size": 190})
    check_arch({"model_type": "llama", "hidden_size": 192})
    check_arch({"model_type": "llama", "hidden_size": 190, "num_attention_heads": 5, "num_key_value_heads": 5})
    with pytest.raises(ValueError, match=r"num_key_value_heads: 32 \(qwen2's default, left out\)"):
        check_arch({"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4})
    toml = ('name = "x"\n[model]\ninit = "scratch"\ntokenizer_train_vocab = 512\narch = {model_type = "llama", '
            'hidden_size = 190}\n[data]\ndataset = "builtin:stdlib-docs"\n[finetune]\n')
    with pytest.raises(ConfigError, match="model.arch.hidden_size|arch.hidden_size"):
        loads_experiment(toml)


def test_scratch_placeholders_are_the_types_defaults():
    assert ff.arch_placeholder("max_position_embeddings", {"model_type": "qwen2"}).startswith("empty: 32768 (qwen2's")
    assert ff.arch_placeholder("intermediate_size", {"model_type": "mistral"}).startswith("empty: 14336 (mistral's")
    assert ff.arch_placeholder("num_key_value_heads", {"model_type": "llama", "num_attention_heads": 4}) == \
        "empty: 4 (= heads)"


@run_async
async def test_scratch_fields_follow_the_type_and_mark_hidden_190(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(tmp_path / "runs", tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "2", "ComposeScreen")
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        screen.query_one("#f-model-init").value = "scratch"
        screen.query_one("#f-model-tokenizer-train-vocab").value = "512"
        kind = screen.query_one("#f-model-arch-model-type")
        assert str(kind.render()) == "‹ none: pick one ›"
        kind.value = "qwen2"
        positions = screen.query_one("#f-model-arch-max-position-embeddings")
        await wait_for(pilot, lambda: positions.placeholder.startswith("empty: 32768 (qwen2's default)"),
                       what="qwen2's max positions")
        kind.value = "llama"
        await wait_for(pilot, lambda: positions.placeholder.startswith("empty: 2048 (llama's default)"),
                       what="llama's max positions")
        hidden = screen.query_one("#f-model-arch-hidden-size")
        hidden.value = "190"
        await wait_for(pilot, lambda: hidden.has_class("-bad-field"), what="hidden 190 marked")
        assert "arch.hidden_size: 190 is not a multiple of num_attention_heads = 32" in screen.validation.message
        screen.query_one("#f-model-arch-num-attention-heads").value = "5"
        kv = screen.query_one("#f-model-arch-num-key-value-heads")
        await wait_for(pilot, lambda: kv.placeholder == "empty: 5 (= heads)", what="kv heads follow the heads")
        await wait_for(pilot, lambda: not hidden.has_class("-bad-field"), what="the mark gone once heads divide it")


# ---- placeholders drawn as placeholders -----------------------------------------------------------------


@run_async
async def test_empty_fields_draw_their_placeholder_in_italics_and_blank_choices_say_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(tmp_path / "runs", tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "2", "ComposeScreen")
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        path = screen.query_one("#f-model-path")
        assert path.value == ""
        await pilot.pause()
        segments = [seg for seg in path.render_line(0) if seg.text.strip()]
        assert "".join(s.text for s in segments).startswith("e.g. ")
        assert all(s.style is not None and s.style.italic for s in segments), segments
        screen.query_one("#f-model-path").value = "org/model"
        await pilot.pause()
        typed = [seg for seg in path.render_line(0) if seg.text.strip()]
        assert not any(s.style is not None and s.style.italic for s in typed)  # a value is not italic
        init = screen.query_one("#f-model-init")  # left out of a new experiment: the schema's default
        assert init.value is None and str(init.render()) == "‹ default pretrained ›"


# ---- students sized from the teacher ----------------------------------------------------------------------


def test_new_student_is_sized_from_a_known_teacher():
    assert new_student("depth", ["depth"], (4, 64, 128)) == {"name": "depth2", "method": "depth", "num_layers": 2}
    assert new_student("width", [], (32, 4096, 14336))["ffn_hidden_size"] == 7168
    assert new_student("depth", []) == {"name": "depth", "method": "depth", "num_layers": 16}  # unknown: the recipe


@run_async
async def test_a_student_added_once_the_teacher_is_known_fits_it(tmp_path, monkeypatch):
    """f2/f3 on a 4-layer, ffn-128 teacher gave 16 layers and ffn 9216, which cannot work: now half its
    layers and half its ffn, as soon as the student appears."""
    monkeypatch.chdir(tmp_path)
    teacher = teacher_dir(tmp_path)
    app = make_app(tmp_path / "runs", tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "2", "ComposeScreen")
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        screen.query_one("#f-model-path").value = str(teacher)
        await wait_for(pilot, lambda: screen.validation is not None and screen.validation.teacher_shape == (4, 64, 128),
                       what="the teacher read")
        # no validation in between (it refits an untouched student afterwards): sized when made
        screen._schedule_validation = lambda: None
        await pilot.press("escape", "f2")
        await wait_for(pilot, lambda: len(screen.raw["prune"]) == 3, what="the depth student")
        await pilot.press("escape", "f3")
        await wait_for(pilot, lambda: len(screen.raw["prune"]) == 4, what="the width student")
        await pilot.pause()
        assert screen.raw["prune"][2:] == [{"name": "depth2", "method": "depth", "num_layers": 2},
                                           {"name": "width2", "method": "width", "ffn_hidden_size": 64}]
        del screen._schedule_validation  # the screen's own again
        screen._validate_now()
        await wait_for(pilot, lambda: screen.validation.ok and "width2" in screen.validation.students,
                       what="all four students valid")


# ---- errors in the student's own box ----------------------------------------------------------------------


@run_async
async def test_each_students_error_shows_in_its_own_box(tmp_path, monkeypatch):
    """At 80x24 the message line is a screen away from the student it names: each student's box says its
    own error (where its size goes), and its size once fixed."""
    monkeypatch.chdir(tmp_path)
    teacher = teacher_dir(tmp_path)
    app = make_app(tmp_path / "runs", tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "2", "ComposeScreen")
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        depth, width = screen.query("StudentForm")

        def box(form) -> str:
            return str(form.query_one(".student-size").render())

        depth.control("num_layers").value = "9"
        width.control("ffn_hidden_size").value = "500"
        screen.query_one("#f-model-path").value = str(teacher)
        await wait_for(pilot, lambda: box(depth).startswith("✗ num_layers: ") and box(width).startswith(
            "✗ ffn_hidden_size: "), what="both students' own errors")
        depth.control("num_layers").value = "2"
        await wait_for(pilot, lambda: "x smaller" in box(depth) and box(width).startswith("✗ ffn_hidden_size"),
                       what="the fixed student's size, the other's error")


@run_async
async def test_every_placeholder_fits_its_field_at_80_columns(tmp_path, monkeypatch):
    """A placeholder cut at the field's edge loses what it was for (the default, the unit): each fits in
    full at 80x24, a scratch teacher's and a search student's (the narrowest, inside its box) included."""
    monkeypatch.chdir(tmp_path)
    app = make_app(tmp_path / "runs", tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await show(pilot, app, "2", "ComposeScreen")
        await wait_for(pilot, screen.form_ready.is_set, what="the form")
        screen.query_one("#f-model-init").value = "scratch"
        await pilot.press("escape", "f4")
        await wait_for(pilot, lambda: len(screen.query("StudentForm")) == 3, what="the search student")
        fields = screen.query("FieldInput")
        await wait_for(pilot, lambda: all(f.content_region.width for f in fields), what="every field laid out")
        cut = [(f.spec.key, f.content_region.width, f.placeholder) for f in fields
               if len(f.placeholder) > f.content_region.width]
        assert cut == []
