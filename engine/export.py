"""`slimlab-engine export RUN STUDENT DIR`: ship a student as a self-contained Hugging Face folder.

DIR gets the student's checkpoint as the run wrote it (config, safetensors weights, tokenizer,
generation config; the teacher's chat template when the student's tokenizer lacks one), the run's
resolved experiment file, and a README.md model card: the teacher and the shape, how the student
was pruned and distilled, the evaluation (losses, tasks with their stderr, speed and the device it
was measured on) and the commands that reproduce it. The folder loads with stock transformers
(`AutoModelForCausalLM`, `pipeline("text-generation")`) and runs in `lm_eval --model hf`.

Reads the run directory only (no torch): exporting is copying files and writing the card.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

from engine.config import Experiment, load_experiment
from engine.contract import RunLayout, human_count, read_json, read_metrics_summary, read_status
from engine.contract.results import ModelResult, read_results
from engine.contract.scores import CHANCE
from engine.errors import UserError
from engine.stages import DISTILL, PRUNE

EXPERIMENT_COPY = "slimlab_experiment.toml"  # the run's resolved config, beside the weights
# files of a tokenizer that carry a chat template (transformers writes either)
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def add_export_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a student as a self-contained Hugging Face folder with a model card")
    p.add_argument("run_dir", metavar="RUN", help="the run directory, e.g. runs/demo")
    p.add_argument("student", metavar="STUDENT", help="the [[prune]] student's name (or its stage, distill-NAME)")
    p.add_argument("out", metavar="DIR", help="the folder to write (must not exist, or be empty, unless --force)")
    p.add_argument("--pruned", action="store_true", help="the pruned model (prune-NAME), not the distilled one")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    out = export(args.run_dir, args.student, args.out, pruned=args.pruned, force=args.force)
    print(f"exported to {out} (README.md: the model card; load it with "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


# ---- which model ---------------------------------------------------------------------------------


def _student_name(exp: Experiment, given: str) -> str:
    names = [p.name for p in exp.prune]
    for prefix in (f"{DISTILL.name}-", f"{PRUNE.name}-"):
        if given.startswith(prefix) and given.removeprefix(prefix) in names:
            return given.removeprefix(prefix)
    if given not in names:
        raise UserError(f"export: no student '{given}' in {exp.source or 'the run'}; its students: "
                        f"{', '.join(names) or 'none'}")
    return given


def _model_stage(exp: Experiment, layout: RunLayout, student: str, pruned: bool) -> str:
    """The stage whose model/ is exported: the distilled student, else (no [distill], or --pruned)
    the pruned one; a missing model is one line saying which stage has to finish first."""
    stage = PRUNE.stage(student) if pruned or exp.distill is None else DISTILL.stage(student)
    if not (layout.model_dir(stage) / "config.json").is_file():
        state = (read_status(layout.stage_status_file(stage)) or {}).get("state", "not started")
        hint = "; --pruned exports the pruned model" if stage.startswith(DISTILL.name) else ""
        raise UserError(f"export: {stage} has no model yet ({state}); wait for it to finish{hint}")
    return stage


# ---- the folder ------------------------------------------------------------------------------------


def export(run_dir: str | Path, student: str, out: str | Path, pruned: bool = False, force: bool = False) -> Path:
    layout = RunLayout(run_dir)
    if not layout.experiment_file.is_file():
        raise UserError(f"export: {run_dir} is not a run directory (no experiment.toml)")
    exp = load_experiment(layout.experiment_file)
    name = _student_name(exp, student)
    stage = _model_stage(exp, layout, name, pruned)
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not force:
        raise UserError(f"export: {out} exists and is not empty; give another folder or --force")
    # written beside DIR, then renamed: an interrupted export leaves no half folder under DIR's name
    tmp = out.with_name(out.name + ".export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(layout.model_dir(stage), tmp)
    _generation_config(tmp)
    template = _chat_template(exp, layout, tmp)
    shutil.copyfile(layout.experiment_file, tmp / EXPERIMENT_COPY)
    (tmp / "README.md").write_text(model_card(exp, layout, name, stage, out, template), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)
    return out


def _generation_config(folder: Path) -> None:
    """generation_config.json from the model's special tokens when the checkpoint has none."""
    if (folder / "generation_config.json").exists():
        return
    cfg = read_json(folder / "config.json") or {}
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def _has_template(folder: Path) -> bool:
    tok = read_json(folder / "tokenizer_config.json") or {}
    return bool(tok.get("chat_template")) or any((folder / f).exists() for f in CHAT_TEMPLATE_FILES)


def _chat_template(exp: Experiment, layout: RunLayout, folder: Path) -> str | None:
    """Where the folder's chat template came from: its own tokenizer, the teacher's (copied), or None
    (a base model: no template)."""
    if _has_template(folder):
        return "the student's tokenizer"
    from engine.contract import tokenizer_source

    teacher = Path(tokenizer_source(exp, layout))
    if not teacher.is_dir() or not _has_template(teacher):
        return None
    for f in CHAT_TEMPLATE_FILES:
        if (teacher / f).exists():
            shutil.copyfile(teacher / f, folder / f)
    template = (read_json(teacher / "tokenizer_config.json") or {}).get("chat_template")
    if template:
        tok = read_json(folder / "tokenizer_config.json") or {}
        tok["chat_template"] = template
        (folder / "tokenizer_config.json").write_text(json.dumps(tok, indent=2, ensure_ascii=False) + "\n")
    return f"the teacher's tokenizer ({teacher})"


# ---- the model card ---------------------------------------------------------------------------------


def _shape(cfg: dict[str, Any]) -> dict[str, Any]:
    heads, kv = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    return {"layers": cfg.get("num_hidden_layers"), "hidden size": cfg.get("hidden_size"),
            "ffn size": cfg.get("intermediate_size"),
            "attention / KV heads": f"{heads} / {kv or heads}" if heads else None,
            "vocabulary": cfg.get("vocab_size")}


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _dropped_layers(layout: RunLayout, prune_stage: str) -> str | None:
    """The layers the prune stage dropped, as its log says them (`dropping layers [..]`)."""
    try:
        text = layout.log_file(prune_stage).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = re.findall(r"dropping layers (\[[\d, ]*\])", text)
    return found[-1] if found else None


def _prune_lines(exp: Experiment, layout: RunLayout, student: str) -> list[str]:
    p = exp.prune_by_name(student)
    targets = {k: getattr(p, k, None) for k in ("drop_layers", "num_layers", "ffn_hidden_size", "hidden_size",
                                                "num_attention_heads", "num_key_value_heads", "target_params",
                                                "target_memory_gb")}
    lines = [f"- **Pruned** by `{p.method}` pruning (Minitron): "
             + ", ".join(f"`{k} = {v}`" for k, v in targets.items() if v is not None) + ".",
             f"  Importance: `{getattr(p, 'importance', 'activation')}` scores from "
             f"{getattr(p, 'calibration_samples', '?')} calibration samples"
             + (f", layers chosen by `{p.selection}`" if getattr(p, "selection", None) else "") + "."]
    dropped = _dropped_layers(layout, PRUNE.stage(student))
    if dropped:
        lines.append(f"  Layers dropped (0-indexed): {dropped}.")
    return lines


def _distill_lines(exp: Experiment, layout: RunLayout, student: str, stage: str) -> list[str]:
    if not stage.startswith(DISTILL.name) or exp.distill is None:
        return ["- **Not distilled**: this is the pruned model, before knowledge distillation."]
    d = exp.distill_for(student)  # [distill] with the student's own overrides
    m = read_metrics_summary(layout.metrics_file(stage))
    tokens = f"{human_count(m.tokens)} tokens" if m.tokens else "tokens not logged"
    return [f"- **Distilled** from the teacher's logits: loss `{d.loss}`, temperature {d.temperature}, "
            f"CE weight {d.ce_weight}; {d.steps} steps of {d.global_batch_size} sequences ({tokens}), "
            f"lr {d.lr} -> {d.min_lr} after {d.warmup_steps} warm-up steps."]


def _eval_lines(teacher: ModelResult | None, res: ModelResult | None) -> list[str]:
    if res is None:
        return ["No evaluation yet: the run's eval stage writes it (`slimlab-engine run ... --only eval`)."]
    lines = ["| split | loss | perplexity | teacher loss |", "|---|---|---|---|"]
    for split, r in res.splits.items():
        t = teacher.splits.get(split) if teacher else None
        lines.append(f"| {split} | {r.loss:.4f} | {r.perplexity:.2f} | {f'{t.loss:.4f}' if t else '–'} |")
    tasks = res.raw.get("tasks") if isinstance(res.raw.get("tasks"), dict) else {}
    if tasks:
        lines += ["", "| task | metric | score | ± stderr | teacher |", "|---|---|---|---|---|"]
        traw = (teacher.raw.get("tasks") or {}) if teacher else {}
        for task, metrics in tasks.items():
            if not isinstance(metrics, dict):
                continue
            # the chance level is no metric of the model: said beside the task's name
            level = metrics.get(CHANCE)
            name = f"{task} (chance {level:.3g})" if isinstance(level, (int, float)) else task
            for metric, value in metrics.items():
                if metric.endswith("_stderr") or metric == CHANCE or not isinstance(value, (int, float)):
                    continue
                tval = (traw.get(task) or {}).get(metric) if isinstance(traw.get(task), dict) else None
                lines.append(f"| {name} | {metric} | {_cell(float(value))} | "
                             f"{_cell(metrics.get(f'{metric}_stderr'))} | {_cell(tval)} |")
                name = task  # the chance level once, on the task's first row
    speed = res.raw.get("speed") if isinstance(res.raw.get("speed"), dict) else {}
    if speed:
        decode = speed.get("decode_tokens_per_s") or {}
        per_batch = ", ".join(f"{_cell(v)} at batch {b}" for b, v in decode.items()) if isinstance(decode, dict) else ""
        lines += ["", f"Speed on {speed.get('device', 'an unnamed device')}: decode tokens/s {per_batch or '–'}; "
                      f"prefill {_cell(speed.get('prefill_tokens_per_s'))} tokens/s; peak memory "
                      f"{_cell(speed.get('peak_memory_gb'))} GB; {_cell(speed.get('speedup_vs_teacher'))}x the "
                      "teacher's decode speed."]
    return lines


def model_card(exp: Experiment, layout: RunLayout, student: str, stage: str, out: Path,
               template: str | None) -> str:
    results = read_results(layout.results_file)
    res, teacher_res = results.get(stage), results.get("teacher")
    from engine.contract import teacher_source

    teacher_dir = Path(teacher_source(exp, layout))
    tcfg = read_json(teacher_dir / "config.json") or ({"model_type": exp.model.arch.get("model_type"), **exp.model.arch}
                                                        if exp.model.arch else {})
    scfg = read_json(layout.model_dir(stage) / "config.json") or {}
    teacher_name = exp.model.path if exp.model.init != "scratch" else "a teacher trained from scratch by the run"
    params = res.params if res and res.params else None
    tparams = teacher_res.params if teacher_res and teacher_res.params else None
    hub_base = (isinstance(exp.model.path, str) and exp.model.init != "scratch"
                and not Path(exp.model.path).exists() and exp.model.path.count("/") == 1)
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             *([f"base_model: {exp.model.path}"] if hub_base else []),
             "tags: [slimlab, minitron, pruned, " + ("distilled]" if stage.startswith(DISTILL.name) else "not-distilled]"),
             "---", ""]
    rows = ["| | teacher | this model |", "|---|---|---|"]
    tshape, sshape = _shape(tcfg), _shape(scfg)
    rows += [f"| {k} | {_cell(tshape.get(k))} | {_cell(sshape.get(k))} |" for k in sshape]
    smaller = f" ({tparams / params:.2f}x smaller)" if params and tparams else ""
    rows.append(f"| parameters | {human_count(tparams) if tparams else '–'} | "
                f"{human_count(params) if params else '–'}{smaller} |")
    body = [
        f"# {exp.name}-{student}", "",
        f"A {exp.prune_by_name(student).method}-pruned"
        + (" and distilled" if stage.startswith(DISTILL.name) else "")
        + f" student of **{teacher_name}**, made with slimlab (Minitron-style pruning and knowledge "
          f"distillation), from the run `{exp.name}` (stage `{stage}`).", "",
        "## Shape", "", *rows, "",
        "## How it was made", "",
        *([f"- **Teacher**: `{exp.model.path}`" + (", fine-tuned first on the data below "
                                                   f"({exp.finetune.steps} steps)" if exp.finetune else "")
           + "."] if exp.model.init != "scratch" else []),
        f"- **Data**: `{exp.data.dataset or ', '.join(exp.data.train_files or [])}`, sequences of "
        f"{exp.data.seq_length} tokens.",
        *_prune_lines(exp, layout, student),
        *_distill_lines(exp, layout, student, stage), "",
        "## Evaluation", "", *_eval_lines(teacher_res, res), "",
        "## Use", "", "```python", "from transformers import pipeline", "",
        f'generate = pipeline("text-generation", model="{out}")',
        'print(generate("def fibonacci(n):", max_new_tokens=40)[0]["generated_text"])', "```", "",
        f"lm-evaluation-harness: `lm_eval --model hf --model_args pretrained={out} --tasks hellaswag`.",
        f"Chat template: {'from ' + template if template else 'none (a base model)'}.", "",
        "## Reproduce", "",
        f"`{EXPERIMENT_COPY}` is the run's resolved experiment file. With slimlab installed:", "", "```sh",
        f"slimlab-engine run {EXPERIMENT_COPY}",
        f"slimlab-engine export {exp.runs_dir}/{exp.name} {student} {out.name}"
        + (" --pruned" if stage.startswith(PRUNE.name) and exp.distill is not None else ""),
        "```", "",
    ]
    return "\n".join(front + body)
