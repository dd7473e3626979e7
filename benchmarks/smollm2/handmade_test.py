import sys, torch
from engine.config import load_experiment
from engine.contract import RunLayout
from engine.evaluation.loss import evaluate_loss
from engine.models.hf import load_model
from engine.training.batches import validation_batches
exp = load_experiment(sys.argv[1] + "/experiment.toml")
lay = RunLayout(exp.run_dir)
for st in sys.argv[2:]:
    m = load_model(str(lay.model_dir(st)), dtype="bfloat16").cuda().eval()
    b = validation_batches(lay.data_dir, exp.data.seq_length, exp.distill, 0, 1, torch.device("cuda"), print, "test")
    print(st, "test loss on the audit's windows", round(evaluate_loss(m, b), 4), len(b), "batches")
