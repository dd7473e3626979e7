"""The `eval` stage: every model of the run on each split (plus tasks, speed, samples), into
eval/results.json (RunLayout.results_file).

One GPU. It reads every earlier stage; a rerun keeps results.json as its per-model cache and
re-evaluates only the models that changed.
"""

from engine.stages.kind import StageKind

RESULTS = "results.json"  # eval/results.json: every model's losses, tasks, speed, samples

EVAL = StageKind(
    name="eval", body="engine.evaluation.stage_body:eval_stage", output=RESULTS, processes=1,
    section="eval", optional=True, per_student=False, inputs=("*",), kept_on_rerun=(RESULTS,),
    footprint="engine.resources.footprints:EVAL",
)
