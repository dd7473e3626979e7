"""Paths inside one run directory: the single place that knows the contract's file names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.stages import EVAL, PREPARE


class RunLayout:
    """Paths inside one run directory; the single place that knows the contract's names.

    The bare names are class attributes for readers that stat many files without building
    a RunLayout (the TUI's scanner)."""

    EXPERIMENT = "experiment.toml"
    STATUS = "status.json"
    METRICS = "metrics.jsonl"
    LOG = "stdout.log"

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    @property
    def experiment_file(self) -> Path:
        return self.root / self.EXPERIMENT

    @property
    def status_file(self) -> Path:
        return self.root / self.STATUS

    def stage_status_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / self.STATUS

    def metrics_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / self.METRICS

    def log_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / self.LOG

    def model_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / "model"

    def checkpoints_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / "checkpoints"

    def tensorboard_dir(self, stage: str) -> Path:
        """TensorBoard event files of a training stage."""
        return self.stage_dir(stage) / "tensorboard"

    def importance_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / "importance.json"

    def search_file(self, stage: str) -> Path:
        """A search student's candidates (prune stages with method = "search")."""
        return self.stage_dir(stage) / "search.json"

    @property
    def teacher_topk_dir(self) -> Path:
        """The teacher's stored top-k logits ([distill] teacher_logits = "cached"), a folder per teacher, data
        and k (engine/distill/teacher_topk.py); not a stage: it holds no status.json."""
        return self.root / "teacher-topk"

    def search_files(self) -> list[Path]:
        """Every search.json of the run (its search students'), whether planned or left over."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*/search.json"))

    @property
    def data_dir(self) -> Path:
        """Packed token files and meta.json, written by `prepare`."""
        return self.stage_dir(PREPARE.stage())

    @property
    def tokenizer_dir(self) -> Path:
        """A tokenizer trained by `prepare` (tokenizer_train_vocab) lives here."""
        return self.data_dir / "tokenizer"

    @property
    def results_file(self) -> Path:
        return EVAL.output_file(self, EVAL.stage())

    def stages_on_disk(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / self.STATUS).exists())


def list_runs(runs_dir: str | Path) -> list[Path]:
    """Run directories under runs_dir (those with an experiment.toml or a status.json)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and ((p / RunLayout.EXPERIMENT).exists() or (p / RunLayout.STATUS).exists()))


def teacher_source(exp: Any, layout: RunLayout) -> str:
    """The teacher checkpoint: the fine-tuned one when [finetune] exists, else [model].path."""
    return str(layout.model_dir("finetune")) if exp.finetune is not None else str(exp.model.path)


def tokenizer_source(exp: Any, layout: RunLayout) -> str:
    """Where the tokenizer comes from: trained by prepare, named explicitly, or the model's own."""
    if exp.model.tokenizer_train_vocab:
        return str(layout.tokenizer_dir)
    return str(exp.model.tokenizer or exp.model.path)
