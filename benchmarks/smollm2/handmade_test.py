"""The loss of distilled students on the windows a search audit judges on (issue 23): `val_batches` batches
of the test split, as engine/prune/audit_part.py reads them, so hand-made students sit beside the audit.

    python3 benchmarks/smollm2/handmade_test.py runs/smollm2-audit distill-width distill-depth
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.config import load_experiment
from engine.contract import RunLayout
from engine.evaluation.loss import evaluate_loss
from engine.models.hf import load_model
from engine.training.batches import validation_batches

run, stages = sys.argv[1], sys.argv[2:]
exp = load_experiment(Path(run) / "experiment.toml")
layout = RunLayout(exp.run_dir)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
for stage in stages:
    model = load_model(str(layout.model_dir(stage)), dtype="bfloat16").to(device).eval()
    batches = validation_batches(layout.data_dir, exp.data.seq_length, exp.distill, 0, 1, device, print, "test")
    print(f"{stage}: test loss on the audit's windows {evaluate_loss(model, batches):.4f} ({len(batches)} batches)")
