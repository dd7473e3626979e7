"""Does the run fit? Each stage's predicted peak against the GPU (or, on the CPU, the host memory),
and the run's disk against the free space of runs_dir: `check` prints the table, and `check` and `run`
refuse a plan that cannot fit with one line naming the stage, the need, what is there and the knob
that fixes it, before anything is written. No torch.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
from dataclasses import dataclass, replace

from engine.config import ConfigError, Experiment
from engine.config.schema import BF16_MAX_BETA2, STATE_BYTES
from engine.disk_space import free_bytes
from engine.resources.footprints import trains_with
from engine.resources.memory import GIB, Knobs, Need
from engine.resources.plan import Shapes, experiment_shapes, stage_disk, stage_need
from engine.stages.names import kind_of
from engine.stages.sections import own_settings

GPU_MEMORY_ENV = "SLIMLAB_GPU_MEMORY_GIB"  # plan for GPUs of this size (a GPU-less box; tests)
GPU_RESERVED = 1.5 * GIB  # the CUDA context and the allocator's fragmentation, outside the prediction
HOST_RESERVED = 1.0 * GIB  # Python, torch's libraries, the data loader


@dataclass(frozen=True)
class Machine:
    """What the stages will run on: GPUs (count and memory each; count 0: the CPU), host memory."""

    gpus: int
    gpu_bytes: int  # per GPU (0 without GPUs)
    gpu_name: str
    host_bytes: int  # available host memory
    elsewhere: bool = False  # GPUs of a given size (check --gpu-memory): this host's memory and disk do not apply

    @property
    def cuda(self) -> bool:
        return self.gpus > 0


@functools.lru_cache(maxsize=1)
def gpu_memory() -> tuple[int, str]:
    """(bytes, name) of the first visible GPU by nvidia-smi; (0, "") without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total,name", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0, ""
    lines = [x for x in out.stdout.splitlines() if x.strip()] if out.returncode == 0 else []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = int(visible.split(",")[0]) if visible and visible.split(",")[0].strip().isdigit() else 0
    if not lines or first >= len(lines):
        return 0, ""
    mib, _, name = lines[first].partition(",")
    try:
        return int(float(mib)) << 20, name.strip()
    except ValueError:
        return 0, ""


def host_available() -> int:
    """MemAvailable of /proc/meminfo (bytes); the physical memory where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def this_machine(gpus: int, gpu_gib: float | None = None) -> Machine:
    """`gpus` GPUs (the run's pool; 0: the CPU); their size from `gpu_gib`, SLIMLAB_GPU_MEMORY_GIB or
    nvidia-smi."""
    gib = gpu_gib if gpu_gib is not None else _env_gib()
    if gib is not None:
        return Machine(max(gpus, 1), int(gib * GIB), "GPU", host_available(), elsewhere=gpu_gib is not None)
    if gpus == 0:
        return Machine(0, 0, "", host_available())
    size, name = gpu_memory()
    return Machine(gpus, size, name or "GPU", host_available())


def _env_gib() -> float | None:
    raw = os.environ.get(GPU_MEMORY_ENV)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{GPU_MEMORY_ENV}={raw!r}: give the GPU memory in GiB, e.g. 80, or unset it") from None
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"{GPU_MEMORY_ENV}={raw!r}: give a positive number of GiB, or unset it")
    return value


# ---- the verdict --------------------------------------------------------------------------


def _limit(m: Machine) -> int:
    return int(m.gpu_bytes - GPU_RESERVED) if m.cuda else int(m.host_bytes - HOST_RESERVED)


def _processes(exp: Experiment, stage: str, m: Machine) -> int:
    if not m.cuda:
        return 1
    want = kind_of(stage).processes
    if stage in exp.launch.stage_gpus:
        return len(exp.launch.stage_gpus[stage]) if want is None else min(want, len(exp.launch.stage_gpus[stage]))
    return m.gpus if want is None else min(want, m.gpus)


Step = tuple[str, dict]  # a knob's setting as `check` prints it, and its change to the Knobs


def _fix(exp: Experiment, shapes: Shapes, stage: str, need: Need, m: Machine) -> str:
    """The knobs that bring a training stage under the limit, and FSDP over the fewest GPUs that would;
    '' when nothing does. Recompute costs speed and the memory formats cost none measured, so the least
    recompute that fits comes first, each level tried with the memory formats added one by one; then the
    rest (smaller loss chunks and batches) on top of them all."""
    k = need.knobs
    if k is None:
        return ""
    section = kind_of(stage).section
    limit = _limit(m)
    cfg = own_settings(exp, stage)
    # a tenth of the layers, then a tenth more at a time, then all of them (false < 0.1 < ... < true == 1):
    # each layer recomputed costs speed (8B -> 4.5B: 0.9 ran 1-2% faster than true on an H100, 0.4 3.2% faster
    # than 0.6 on an H200)
    recompute: list[Step] = [(f"{section}.gradient_checkpointing = {f / 10}", {"gradient_checkpointing": f / 10})
                             for f in range(1, 10) if f / 10 > k.gradient_checkpointing]
    if k.gradient_checkpointing < 1:
        recompute.append((f"{section}.gradient_checkpointing = true", {"gradient_checkpointing": True}))
    formats: list[Step] = []  # no speed cost and the same loss, measured on an H100 (benchmarks/RESULTS.md)
    # bf16 moments: refused under FSDP and above BF16_MAX_BETA2 (engine/config/schema.py)
    if k.state_bytes == 8 and not k.fsdp and cfg.adam_beta2 <= BF16_MAX_BETA2:
        formats.append((f"{section}.optimizer_states = \"bfloat16\"", {"state_bytes": 4}))
    # no fp32 master copy (4 bytes a parameter): stochastic rounding; refused under FSDP
    if k.master and not k.stochastic and not k.fsdp:
        formats.append((f"{section}.master_weights = \"stochastic\"", {"master_weights": "stochastic"}))
    least = _least_recompute(exp, shapes, stage, k, recompute, formats, limit, m)
    fixes = [least if least is not None else _rest(exp, shapes, stage, k, recompute[-1:] + formats, limit, m)]
    if m.cuda and not (k.fsdp and k.processes > 1):
        for n in (2, 4, 8):
            sharded = replace(k, fsdp=True, processes=n, accumulation=max(1, k.accumulation // n))
            got = _fits_with(exp, shapes, stage, sharded, m, limit)
            if got is not None:
                fixes.append(f"strategy = \"fsdp\" over {n} GPUs (~{got / GIB:.0f} GiB each)")
                break
    return " or ".join(f for f in fixes if f)


def _apply(k: Knobs, steps: list[Step]) -> Knobs:
    for _, change in steps:
        k = replace(k, **change)
    return k


def _setting(steps: list[Step], total: int) -> str:
    return f"set {' and '.join(text for text, _ in steps)} (~{total / GIB:.0f} GiB)"


def _least_recompute(exp: Experiment, shapes: Shapes, stage: str, k: Knobs, recompute: list[Step],
                     formats: list[Step], limit: int, m: Machine) -> str | None:
    """The least recompute that fits (none first), each level with the memory formats added one by one;
    None when even all of them with every layer recomputed do not fit."""
    for level in [[], *([r] for r in recompute)]:
        for j in range(len(formats) + 1):
            trial = level + formats[:j]
            if trial and (total := _total(exp, shapes, stage, _apply(k, trial), m)) <= limit:
                return _setting(trial, total)
    return None


def _rest(exp: Experiment, shapes: Shapes, stage: str, k: Knobs, base: list[Step], limit: int, m: Machine) -> str:
    """Every recompute and memory format (`base`), then 8-bit moments, smaller loss chunks and batches,
    cumulatively, until the stage fits; '' when it never does."""
    section = kind_of(stage).section
    steps: list[Step] = []
    # 8-bit moments only where nothing above fits: their update cost 20% of the speed at 1.24B and 5-8% at 8B
    # on an H200, more than the recompute they save (benchmarks/RESULTS.md); refused under FSDP (schema.py)
    if k.state_bytes > STATE_BYTES["int8"] and not k.fsdp:
        steps.append((f"{section}.optimizer_states = \"int8\"", {"state_bytes": STATE_BYTES["int8"]}))
    if k.chunk_tokens > 1024 and hasattr(own_settings(exp, stage), "chunk_tokens"):  # a KD loss's chunk ([distill])
        steps.append(("distill.chunk_tokens = 1024", {"chunk_tokens": 1024}))
    if k.micro_batch > 1 and not k.master:
        steps.append((f"{section}.micro_batch_size = 1", {"micro_batch": 1,
                                                         "accumulation": k.micro_batch * k.accumulation}))
    micro = k.micro_batch // 2
    while k.master and k.accumulation == 1 and micro >= 1:  # a smaller step, not accumulation: no fp32 sums
        steps.append((f"{section}.global_batch_size = micro_batch_size = {micro}", {"micro_batch": micro}))
        micro //= 2
    chosen = list(base)
    cur = _apply(k, chosen)
    cur_total = _total(exp, shapes, stage, cur, m)
    for text, change in steps:
        trial = replace(cur, **change)
        total = _total(exp, shapes, stage, trial, m)
        if total >= cur_total:
            continue  # no help here (a smaller micro-batch adds fp32 gradient sums under master weights)
        cur, cur_total = trial, total
        chosen = [c for c in chosen if c[0].split(" = ")[0] != text.split(" = ")[0]] + [(text, change)]
        if total <= limit:
            return _setting(chosen, total)
    return ""


def _total(exp: Experiment, shapes: Shapes, stage: str, k: Knobs, m: Machine) -> int:
    need = stage_need(exp, shapes, stage, k.processes, m.cuda, knobs=k)
    return need.total if need is not None else 0


def _fits_with(exp: Experiment, shapes: Shapes, stage: str, k: Knobs, m: Machine, limit: int) -> int | None:
    need = stage_need(exp, shapes, stage, k.processes, m.cuda, knobs=k)
    return need.total if need is not None and need.total <= limit else None


def _largest_micro(exp: Experiment, shapes: Shapes, stage: str, need: Need, m: Machine) -> int | None:
    """With micro_batch_size "auto": the largest divisor of the per-process batch predicted to fit."""
    k = need.knobs
    if k is None:
        return None
    per = k.micro_batch * k.accumulation
    best = None
    for micro in range(1, per + 1):
        if per % micro == 0:
            if _fits_with(exp, shapes, stage, replace(k, micro_batch=micro, accumulation=per // micro), m,
                          _limit(m)) is None:
                break
            best = micro
    return best


def _where(m: Machine) -> str:
    if m.cuda and not m.gpu_bytes:
        return f"{m.gpus} GPU(s) of unknown size (nvidia-smi did not say)"
    return f"{m.gpus} x {m.gpu_name}, {m.gpu_bytes / GIB:.0f} GiB each" if m.cuda \
        else f"the CPU, {m.host_bytes / GIB:.0f} GiB of host memory available"


def resource_lines(exp: Experiment, m: Machine, stages: list[str] | None = None, refuse: bool = True) -> list[str]:
    """`check`'s table of predicted memory and disk; ConfigError (one line, the fix) when `refuse` and
    a stage or the run's disk cannot fit. `stages`: those that will run (default: every stage not
    finished yet)."""
    shapes = experiment_shapes(exp)
    if shapes is None:
        return ["memory: not predicted (the teacher's config or vocabulary is not known before prepare)"]
    stages = stages if stages is not None else [s for s in exp.stages() if not _finished(exp, s)]
    limit = _limit(m)
    lines = [f"memory and disk, predicted for {_where(m)}:"]
    first_error = ""
    for stage in stages:
        need = stage_need(exp, shapes, stage, _processes(exp, stage, m), m.cuda)
        if need is None:
            continue
        text = f"  {stage:<22} {need.describe()}"
        auto = need.knobs is not None and _auto_micro(exp, stage)
        if auto and m.cuda and m.gpu_bytes:
            best = _largest_micro(exp, shapes, stage, need, m)
            text += f"; micro_batch_size auto: up to {best} predicted to fit" if best else ""
        via = trains_with(exp, stage)  # a search training candidates: "auto" picks their micro-batch there too
        if via is not None and _auto_micro(exp, via) and m.cuda and m.gpu_bytes:
            best = _largest_micro(exp, shapes, via, stage_need(exp, shapes, via, 1, m.cuda), m)
            at_best = stage_need(exp, shapes, stage, 1, m.cuda, best) if best else None
            if at_best is not None:
                text += (f"; its candidates train at micro_batch_size auto: up to {best} predicted to fit "
                         f"(~{at_best.gib():.1f} GiB then)")
        lines.append(text)
        if need.total > limit and not first_error and (m.gpu_bytes or not m.cuda):  # size unknown: no verdict
            fix = _fix(exp, shapes, stage, need, m)
            have = f"the GPU has {m.gpu_bytes / GIB:.0f}" if m.cuda else f"the host has {m.host_bytes / GIB:.0f} available"
            per = "per GPU" if m.cuda else "of host memory"
            first_error = (f"{exp.source}: {stage}: needs ~{need.gib():.0f} GiB {per}, {have}; "
                           + (fix if fix else _no_fix(m, stage)))
    if m.cuda and not first_error:
        host_line, first_error = _host_for_loading(exp, shapes, stages, m)
        lines.append(host_line)
    disk_line, disk_error = _disk(exp, shapes, stages, m)
    lines.append(disk_line)
    if refuse and (first_error or disk_error):
        raise ConfigError(first_error or disk_error)
    return lines


def _host_for_loading(exp: Experiment, shapes: Shapes, stages: list[str], m: Machine) -> tuple[str, str]:
    """GPU stages load their models on the host first (engine/resources/footprints.py host_load)."""
    from engine.resources.footprints import footprint_of

    need, what = max((footprint_of(s).host_load(exp, shapes, s) for s in stages), default=(0, ""))
    if m.elsewhere:
        return f"  host: ~{need / GIB:.1f} GiB to load {what or 'the models'}", ""
    line = f"  host: ~{need / GIB:.1f} GiB to load {what or 'the models'}; {m.host_bytes / GIB:.0f} GiB available"
    if need + HOST_RESERVED <= m.host_bytes:
        return line, ""
    return line, (f"{exp.source}: {what}: loading needs ~{need / GIB:.0f} GiB of host memory, "
                  f"{m.host_bytes / GIB:.0f} GiB is available; free host memory or use a machine with more")


def _no_fix(m: Machine, stage: str) -> str:
    if m.cuda:
        return "use a larger GPU, more GPUs with strategy = \"fsdp\", or a smaller model"
    return f"run {stage} on a GPU, or shrink the model (model.arch) or data.seq_length"


def _auto_micro(exp: Experiment, stage: str) -> bool:
    return own_settings(exp, stage).micro_batch_size == "auto"


def _finished(exp: Experiment, stage: str) -> bool:
    from engine.contract import RunLayout

    return kind_of(stage).output_file(RunLayout(exp.run_dir), stage).exists()


def _disk(exp: Experiment, shapes: Shapes, stages: list[str], m: Machine) -> tuple[str, str]:
    """The run's disk: the models it keeps, the teacher's stored top-k (one folder the students share: the
    largest reader's), plus the largest stage's checkpoints at once."""
    models, transient, biggest, on_cancel, cache = 0, 0, "", 0, 0
    for stage in stages:
        d = stage_disk(exp, shapes, stage, _processes(exp, stage, m), m.cuda)
        if d is None:
            continue
        models += d.model
        cache = max(cache, d.cache)
        on_cancel = max(on_cancel, d.checkpoint)
        extra = d.peak - d.model
        if extra > transient:
            transient, biggest = extra, f"{stage}: {d.checkpoints_at_once} x {d.checkpoint / GIB:.1f} GiB checkpoints"
    total = models + cache + transient
    if cache:
        biggest = ", ".join(x for x in (f"teacher top-k {cache / GIB:.1f} GiB", biggest) if x)
    if m.elsewhere:
        return (f"  disk: ~{total / GIB:.1f} GiB in runs_dir (models {models / GIB:.1f}"
                + (f", {biggest}" if biggest else "") + ")"), ""
    free = free_bytes(exp.run_dir)
    line = (f"  disk: ~{total / GIB:.1f} GiB in {exp.runs_dir} (models {models / GIB:.1f}"
            + (f", {biggest}" if biggest else "") + f"); {free / GIB:.0f} GiB free"
            + (f"; a cancel writes a {on_cancel / GIB:.1f} GiB checkpoint" if on_cancel and not transient else ""))
    if total <= free:
        return line, ""
    fix = _disk_fix(exp) if transient else ""
    return line, (f"{exp.source}: the run needs ~{total / GIB:.0f} GiB of disk in {exp.runs_dir} (models "
                  f"{models / GIB:.0f} GiB" + (f", {biggest}" if biggest else "") + f"), {free / GIB:.0f} GiB "
                  f"is free; {fix}free space or move runs_dir")


def _disk_fix(exp: Experiment) -> str:
    """The trainer keys that shrink the checkpoints, where they are not set yet."""
    cfgs = [c for c in (exp.finetune, exp.distill) if c is not None]
    keys = []
    if any(c.keep_checkpoints > 1 for c in cfgs):
        keys.append("keep_checkpoints = 1")
    if any(c.optimizer_states == "float32" for c in cfgs) and exp.launch.strategy != "fsdp":
        keys.append("optimizer_states = \"bfloat16\"")
    keys.append("checkpoint_interval above steps (a cancel still writes one)")
    return "set " + ", ".join(keys) + " in [finetune]/[distill], or "
