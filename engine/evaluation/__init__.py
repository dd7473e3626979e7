"""The eval stage and what it measures, one module each:

    loss.py        validation loss (also used by training and pruning)
    task_specs.py  [eval] tasks -> lm-eval task names / configs; the lm-eval install check (no torch)
    tasks.py       downstream tasks through lm-evaluation-harness
    speed.py       prefill / decode speed and peak memory
    samples.py     greedy samples from prompts or the starts of validation documents
    cache.py       per-model cache keys: a model is evaluated again only when it or [eval] changed
    stage_body.py  eval_stage: every model of the run -> eval/results.json

The rules over results.json's metrics (one score per task, their mean, speedup vs the teacher) are
engine/contract/scores.py: torch-free, read by `compare` and the TUI through the contract.
This package's __init__ imports nothing.
"""
