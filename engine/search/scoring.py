"""How a search scores a candidate pruned in memory: validation loss, loss after a short
distillation, or an [eval] task. Every candidate sees the same batches.

- "loss": validation loss right after pruning, on the windows the prune stage reports its
  step-0 loss on (the distill stage's validation windows). Lower is better.
- "distill": `score_steps` steps of the run's [distill] recipe on a copy of the candidate (the
  same training windows for each), then the same validation loss (with `score_seeds`, the mean over
  that many data orders). Rankings right after pruning
  can flip after a little distillation (Minitron; Model-Optimizer's notes), at the cost of
  score_steps training steps per candidate.
- "distill+loss": the same short distillation, but the candidates are ranked by the sum of two
  ranks: their distill score's and their loss right after pruning's (ties: the lower loss). On
  SmolLM2-135M the shapes near the top differ by less than a 20-step score's run-to-run noise, and
  the two signals err differently: what the teacher's knowledge survived the cut, and how fast the
  cut recovers (benchmarks/RESULTS.md, "Search on a GPU").
- "distill-kd": the first `score_steps` steps of the student's [distill] run itself (its learning-rate
  schedule, not one squeezed into the short run; its first training windows), scored by the run's own
  loss averaged over the last fifth of them. Every candidate sees the same batches, so the shapes are
  compared batch for batch, with no validation pass. (Like every distill score it trains beside the live
  teacher on the full vocabulary, without a recipe's hidden-state term or stored top-k: where the recipe has
  those, the figure is its loss without them.) On SmolLM2-135M a search scored this way ranked the six
  shapes its audit distilled in full at +0.89 on held-out text and chose the best (benchmarks/RESULTS.md,
  "A search scored by distill-kd").
- score_task: an [eval] task through lm-evaluation-harness (engine.evaluation.tasks); its
  headline metric (engine.contract.scores.headline_metric), in that metric's direction.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.errors import UserError
from engine.evaluation.loss import evaluate_loss
from engine.search.audit import ranks


@dataclass
class Scorer:
    """score(candidate) -> float; `higher_is_better` says which way the winner lies (a task scorer
    learns it, and `metric`, from the first metric lm-eval reports). A "distill+loss" scorer's ranking adds
    the rank of the loss right after pruning to the score's (`with_loss_rank`)."""

    name: str
    score: Callable[[nn.Module], float]
    higher_is_better: bool = False
    metric: str | None = None
    micro: int | None = None  # a distill scorer: the largest micro-batch it trained with ("auto" resolves per candidate)
    seeds: int = 1  # a distill scorer: the data orders each score is the mean of (score_seeds)

    @property
    def with_loss_rank(self) -> bool:
        return self.name == "distill+loss"

    def ranked(self, scores: dict[int, float], losses: dict[int, float] | None = None) -> list[int]:
        """The keys of `scores`, best first (equals by key). `losses`: each one's loss right after
        pruning, which a `with_loss_rank` scorer needs."""
        sign = -1.0 if self.higher_is_better else 1.0
        if not self.with_loss_rank:
            return sorted(scores, key=lambda i: (sign * scores[i], i))
        if losses is None:
            raise ValueError(f"{self.name}: ranking needs each candidate's loss right after pruning")
        keys = list(scores)
        by_score = ranks([sign * scores[i] for i in keys])
        by_loss = ranks([losses[i] for i in keys])
        total = {i: a + b for i, a, b in zip(keys, by_score, by_loss, strict=True)}
        return sorted(keys, key=lambda i: (total[i], losses[i], i))

    def figures(self, score: float, loss: float) -> str:
        """A candidate's figures as the log gives them: its score, and its loss where the ranking uses it."""
        return f"distill {score:.4f}, loss {loss:.4f}" if self.with_loss_rank else f"{self.name} {score:.4f}"


def loss_scorer(windows: list[torch.Tensor]) -> Scorer:
    return Scorer("loss", lambda model: evaluate_loss(model, windows))


def distill_scorer(exp: Any, name: str, teacher: nn.Module, vocab: int, steps: int,
                   orders: list[list[torch.Tensor]], windows: list[torch.Tensor],
                   rule: str = "distill") -> Scorer:
    """A short distillation (the student's [distill] recipe, `steps` steps, step i on the global batch
    `order[i]`) of a copy of each candidate, then its validation loss; with several `orders` (score_seeds:
    other data orders) one distillation from the same copy each, and the mean of their losses.
    `rule`: "distill", "distill+loss" (the same figure, ranked with the loss after pruning: Scorer) or
    "distill-kd" (the first `steps` of the full run's schedule, scored by the mean training loss of its last
    `score_window(steps)` steps).

    The micro-batch is the trainer's, as in the distill stage: with "auto" it searches for the largest
    that fits (a fixed 4 left a 135M candidate waiting on kernel launches, 7x slower a step than the
    stage). Every candidate trains on the same windows whatever micro-batch it gets."""
    from engine.config.prune_schema import score_window
    from engine.models.hf import torch_dtype
    from engine.training.setup import lr_at, make_accelerator
    from engine.training.stage_bodies import loss_spec, train_dtype
    from engine.training.step import Trainer

    base = exp.distill_for(name)
    run_start = rule == "distill-kd"  # the run's own first steps, else a run of `steps` with its own schedule
    window = score_window(steps)
    squeeze = {} if run_start else {"steps": steps, "warmup_steps": min(base.warmup_steps, steps - 1)}
    # eager: every candidate is a new shape, and recompiling each would cost more than its few steps
    cfg = base.model_copy(update={**squeeze, "compile": False})
    accelerator = make_accelerator("ddp", exp.launch.mixed_precision)
    dtype = torch_dtype(train_dtype(exp, accelerator.device.type == "cuda"))  # as the distill stage
    seq = orders[0][0].shape[-1] - 1  # windows carry the label shift's extra token

    def distilled_loss(candidate: nn.Module, order: list[torch.Tensor]) -> float:
        student = copy.deepcopy(candidate).to(dtype)  # it shares tensors with the teacher: train a copy
        trainer = Trainer(accelerator, student, cfg, loss_spec(cfg, vocab), teacher=teacher, seq_length=seq)
        try:
            pending, seen = [], []
            for step in range(steps):  # launch step i+1 before reading step i, as the training loop does
                pending.append(trainer.launch(list(order[step].split(trainer.micro)), lr_at(step, cfg)))
                if len(pending) > 1:
                    seen.append(pending.pop(0).result().loss)
            seen += [p.result().loss for p in pending]
            if run_start:  # a step skipped as not finite ranks the candidate last
                last = seen[-window:]
                loss = sum(last) / len(last) if all(math.isfinite(x) for x in last) else math.inf
            else:
                loss = evaluate_loss(trainer.unwrapped().student, windows)
            scorer.micro = max(scorer.micro or 0, trainer.micro)
        finally:
            # the accelerator outlives this candidate: its hooks would keep the trainer (the copy, its
            # gradients and optimizer state) alive for the rest of the search
            trainer.release()
            del trainer, student
            accelerator.free_memory()
        return loss

    def score(candidate: nn.Module) -> float:
        return sum(distilled_loss(candidate, order) for order in orders) / len(orders)

    scorer = Scorer(rule, score, seeds=len(orders))
    return scorer


def task_scorer(exp: Any, task: str, tokenizer: Any) -> Scorer:
    """Scores by the task's headline metric (engine.contract.scores: the rule `compare` uses too),
    in that metric's direction. A task lm-eval did not report fails the stage: no other task may
    be scored in its place."""
    from engine.contract.scores import headline_metric
    from engine.evaluation.task_specs import resolve_entry
    from engine.evaluation.tasks import reported_names, run_tasks

    ev = exp.eval
    entry = resolve_entry(task, exp.source)
    names = reported_names(entry)
    if len(names) != 1:
        raise UserError(f"score_task: '{task}' holds {len(names)} tasks ({', '.join(names) or 'none'}); "
                        "name one task (one YAML file) to score by")
    name = names[0]
    scorer = Scorer(f"task {task}", lambda model: 0.0, higher_is_better=True)

    def score(model: nn.Module) -> float:
        top, members = run_tasks(model, tokenizer, [entry], ev.num_fewshot, ev.limit, ev.task_batch_size, exp.seed)
        metrics = top.get(name, members.get(name))
        if metrics is None:
            raise UserError(f"score_task: lm-eval reported no results for task '{name}' (it reported "
                            f"{', '.join(sorted(top)) or 'nothing'}); check the task's name in its YAML")
        got = headline_metric(metrics)
        if got is None:
            raise UserError(f"score_task: task '{name}' reported no metric")
        if scorer.metric not in (None, got[0]):
            raise UserError(f"score_task: task '{name}' reported {got[0]} for one candidate and "
                            f"{scorer.metric} for another; give it one metric")
        scorer.metric, scorer.higher_is_better = got[0], got[2]
        return got[1]

    scorer.score = score
    return scorer
