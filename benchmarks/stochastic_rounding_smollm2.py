"""master_weights = "stochastic" against fp32 masters on trained weights, on the CPU (issue 21).

SmolLM2-135M-Instruct (a plain HF folder: benchmarks/smollm2/convert.py) teaches its first 15 layers (a depth
student) on SmolLM2-tokenized text (benchmarks/smollm2/gpu_run.sh pack: .carry/smol-textkit). Each variant
starts from the same student and reads the same windows; the optimizer's update runs as on a GPU (bf16
weights in MasterAdamW: its torch reference on the CPU, its Triton kernel on CUDA), the forward and
backward in bf16. Variants:
  masters          bf16 weights rounded stochastically from fp32 master copies (the engine's default on GPUs)
  masters-nearest  the same, rounded to nearest (the default until 2026-12-06)
  stochastic       bf16 weights, no copy, stochastic rounding (master_weights = "stochastic")
  fp32             fp32 weights, no rounding at all (the exact reference)
  masters-f8       the default with float8 = true (torchao's float8 matmuls; CUDA of compute capability 8.9+)
The KD loss of each step and the validation loss at the end. CPU time is noise on a shared box; the losses are
the figure.

    python3 benchmarks/stochastic_rounding_smollm2.py --model /tmp/smolhf --data .carry/smol-textkit [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="a prepare output folder tokenized with the model's tokenizer")
    ap.add_argument("--layers", type=int, default=15)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--variants", default="masters,masters-nearest,stochastic,fp32")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (the fused kernels)")
    ap.add_argument("--json")
    a = ap.parse_args()
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from engine.config import DistillConfig
    from engine.data import PackedDataset
    from engine.evaluation.loss import evaluate_loss
    from engine.training.setup import lr_at
    from engine.training.stage_bodies import loss_spec
    from engine.training.step import Trainer

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    base = copy.deepcopy(teacher)
    base.model.layers = base.model.layers[:a.layers]
    base.config.num_hidden_layers = a.layers
    train = PackedDataset(a.data, "train", a.seq, seed=0).batches(a.batch, start=0)
    windows = [torch.as_tensor(next(train)).long().to(a.device) for _ in range(a.steps)]
    val_it = PackedDataset(a.data, "validation", a.seq, seed=0).batches(a.batch, start=0)
    val = [torch.as_tensor(next(val_it)).long() for _ in range(4)]
    cfg = DistillConfig(steps=a.steps, global_batch_size=a.batch, micro_batch_size=a.batch, lr=a.lr, min_lr=a.lr / 10,
                        warmup_steps=a.steps // 10)
    vocab = teacher.config.vocab_size
    results = {"model": a.model, "device": a.device, "layers": a.layers, "steps": a.steps, "tokens_per_step": a.batch * a.seq,
               "lr": a.lr, "variants": {}}
    print(f"student: first {a.layers} layers; validation loss before: {evaluate_loss(base, val):.4f}", flush=True)
    for name in a.variants.split(","):
        student = copy.deepcopy(base)
        master = {"masters": True, "masters-nearest": True, "stochastic": "stochastic", "fp32": False,
                  "masters-f8": True}[name]
        run_cfg = cfg.model_copy(update={"float8": name.endswith("-f8")})
        t_model = copy.deepcopy(teacher).to(torch.bfloat16) if master else teacher  # the GPU path's bf16 teacher
        trainer = Trainer(Accelerator(cpu=a.device == "cpu"), student, run_cfg, loss_spec(cfg, vocab), t_model, master_weights=master,
                          seq_length=a.seq)
        if name == "masters-nearest":
            trainer._master().rounds_stochastically = False
        losses = [trainer.step([w], lr_at(step, run_cfg)).loss for step, w in enumerate(windows)]
        trained = copy.deepcopy(base).to(a.device)  # a stock model of the trained weights (float8 layers keep their names)
        trained.load_state_dict(trainer.unwrapped().student.state_dict())
        v = evaluate_loss(trained, val)
        results["variants"][name] = {"kd_loss": losses, "validation": v}
        print(f"{name:10s} KD loss {losses[0]:.4f} -> {losses[-1]:.4f} (mean of the last 10: "
              f"{sum(losses[-10:]) / 10:.4f}); validation {v:.4f}", flush=True)
        trainer.release()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
