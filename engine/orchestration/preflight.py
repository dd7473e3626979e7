"""What can be checked with files but without weights, at `check` and at the start of `run`, before
anything is written: the model and tokenizer folders, the data files, the vocabulary against the
tokenizer, and distill.layer_map against the layer counts. One line, exit 2, like a schema error.

seq_length is checked against the data where its size is known without tokenizing (engine/data/up_front.py);
the exact token counts are checked by prepare. No torch import.
"""

from __future__ import annotations

from engine.config import Experiment
from engine.errors import ConfigError, UserError
from engine.models.locate import check_model_path, check_tokenizer_path
from engine.shapes.targets import student_shapes, teacher_config, tokenizer_vocab_size
from engine.stages import DISTILL


def preflight(exp: Experiment) -> None:
    """ConfigError naming the file, the key and the fix, on the first problem found."""
    try:
        _check_model_and_tokenizer(exp)
        if not exp.data.prepared:
            from engine.data.sources import check_files

            check_files(exp.data, exp.source)
        from engine.data.up_front import check_data_up_front

        check_data_up_front(exp.data, exp.source)
    except UserError as e:
        raise ConfigError(f"{exp.source}: {e}") from None
    _check_vocab(exp)
    _check_layer_map(exp)


def _check_model_and_tokenizer(exp: Experiment) -> None:
    m = exp.model
    if m.init == "pretrained" and m.path:
        check_model_path(m.path)
    if m.tokenizer:
        check_tokenizer_path(m.tokenizer)
    elif m.path and not m.tokenizer_train_vocab and not exp.data.prepared:
        check_tokenizer_path(m.path, key="model.path")  # the model's own tokenizer


def _check_vocab(exp: Experiment) -> None:
    """The embedding must have a row for every id the tokenizer gives out."""
    m = exp.model
    tc = teacher_config(exp)
    vocab = (tc.config.get("vocab_size") if tc and tc.vocab_known else None)
    if not isinstance(vocab, int):
        return
    if m.init == "scratch" and m.arch and m.arch.get("vocab_size") and m.tokenizer_train_vocab:
        if m.tokenizer_train_vocab > vocab:
            raise ConfigError(f"{exp.source}: model.arch.vocab_size = {vocab} is below tokenizer_train_vocab = "
                              f"{m.tokenizer_train_vocab}; raise it, or leave it out to follow the tokenizer")
        return
    source = m.tokenizer or (m.path if not m.tokenizer_train_vocab else None)
    ids = tokenizer_vocab_size(source) if source else None
    if ids is None or ids <= vocab:
        return
    if m.init == "scratch":
        fix = f"raise model.arch.vocab_size to at least {ids}, or leave it out to follow the tokenizer"
    else:
        fix = ("use the model's own tokenizer (leave model.tokenizer out)" if m.tokenizer
               else "give model.tokenizer the tokenizer the model was trained with")
    raise ConfigError(f"{exp.source}: the tokenizer {source} gives ids up to {ids - 1} but the model's "
                      f"vocab_size is {vocab}; {fix}")


def _check_layer_map(exp: Experiment) -> None:
    """Each [student_layer, teacher_layer] pair of distill.layer_map names layers both models have."""
    if exp.distill is None or not any(exp.distill_for(p.name).layer_map for p in exp.prune):
        return
    _tc, teacher, students = student_shapes(exp)
    if teacher is None:
        return  # shapes unknown offline: the distill stage checks the pairs when it loads the models
    for p, student in zip(exp.prune, students, strict=True):
        ns, nt = student.shape.num_layers, teacher.num_layers
        for s, t in exp.distill_for(p.name).layer_map or []:
            if not (0 <= s < ns and 0 <= t < nt):
                raise ConfigError(f"{exp.source}: distill.layer_map: [{s}, {t}] is out of range for "
                                  f"{DISTILL.stage(p.name)} (student layers 0..{ns - 1}, teacher layers 0..{nt - 1}); "
                                  "fix the pair")
