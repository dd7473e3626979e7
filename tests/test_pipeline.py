"""The orchestrator without torch: caching decisions, stage order, failures, resume, parallel GPU sets.

Stage processes are stand-ins (tests/_pipeline_fake_stage.py) that follow the same contract, so
these tests take seconds; tests/test_pipeline_e2e.py runs the real stages.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from engine.config import ConfigError, load_experiment
from engine.contract import RunLayout, StageStatus, read_json, write_json
from engine.orchestration import orchestrator
from engine.orchestration.launch import StageCommand, engine_args, launch_env
from engine.orchestration.orchestrator import Orchestrator
from engine.orchestration.run import check_not_busy, write_experiment
from engine.orchestration.stage_actions import RunBusy, clear_stage, stage_actions
from engine.stages import kind_of, stage_deps

FAKE = Path(__file__).with_name("_pipeline_fake_stage.py")

TOML = """
name = "pipe"
[model]
init = "scratch"
dtype = "float32"
arch = {model_type = "llama", hidden_size = 64, intermediate_size = 128, num_hidden_layers = 4, num_attention_heads = 4, num_key_value_heads = 2}
tokenizer_train_vocab = 512
[data]
dataset = "builtin:stdlib-docs"
seq_length = 32
[finetune]
steps = 10
global_batch_size = 4
micro_batch_size = 4
[[prune]]
name = "depth"
method = "depth"
num_layers = 2
[[prune]]
name = "width"
method = "width"
hidden_size = 32
[distill]
steps = 10
global_batch_size = 4
micro_batch_size = 4
[eval]
batches = 2
"""

ALL = ["prepare", "finetune", "prune-depth", "prune-width", "distill-depth", "distill-width", "eval"]


def _exp(tmp_path: Path, *overrides: str, text: str = TOML):
    f = tmp_path / "exp.toml"
    f.write_text(text)
    exp = load_experiment(f, list(overrides))
    exp.runs_dir = str(tmp_path / "runs")
    return exp


def _succeed(exp, layout: RunLayout, stage: str, output: bool = True) -> None:
    """Mark a stage done the way a stage process does (the real StageStatus writer)."""
    st = StageStatus(layout.stage_dir(stage), stage, exp.stage_hash(stage))
    st.start()
    st.finish("succeeded")
    if output:
        out = layout.stage_dir(stage) / kind_of(stage).output
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")
        if out.name == "config.json":  # a model folder holds weights too (a finished stage is checked for them)
            (out.parent / "model.safetensors").write_bytes(b"\x02" + b"\x00" * 7 + b"{}")


def _actions(plans) -> dict[str, str]:
    return {p.stage: p.action for p in plans}


# ---- caching decisions --------------------------------------------------------------------------


def test_stage_graph(tmp_path):
    deps = stage_deps(_exp(tmp_path).stages())
    assert deps["distill-width"] == ["prepare", "finetune", "prune-width"]
    assert deps["prune-depth"] == ["prepare", "finetune"]
    assert set(deps["eval"]) == set(ALL) - {"eval"}


def test_fresh_run_plans_everything(tmp_path):
    exp = _exp(tmp_path)
    plans = stage_actions(exp, RunLayout(exp.run_dir))
    assert [p.stage for p in plans] == ALL
    assert {p.action for p in plans} == {"run"}


def _all_done(tmp_path, *overrides):
    exp = _exp(tmp_path, *overrides)
    layout = RunLayout(exp.run_dir)
    for s in ALL:
        _succeed(exp, layout, s)
    return exp, layout


def test_finished_run_is_skipped(tmp_path):
    exp, layout = _all_done(tmp_path)
    assert set(_actions(stage_actions(exp, layout)).values()) == {"skip"}


def test_changing_one_prune_target_reruns_only_that_student(tmp_path):
    _all_done(tmp_path)
    exp = _exp(tmp_path, "prune.width.hidden_size=48")
    acts = _actions(stage_actions(exp, RunLayout(exp.run_dir)))
    assert acts == {"prepare": "skip", "finetune": "skip", "prune-depth": "skip", "prune-width": "run",
                    "distill-depth": "skip", "distill-width": "run", "eval": "run"}


def test_changing_the_teacher_recipe_reruns_downstream(tmp_path):
    _all_done(tmp_path)
    exp = _exp(tmp_path, "finetune.lr=3e-4")
    acts = _actions(stage_actions(exp, RunLayout(exp.run_dir)))
    assert acts["prepare"] == "skip"
    assert all(acts[s] == "run" for s in ALL[1:])


def test_failed_and_cancelled_stages_resume(tmp_path):
    exp, layout = _all_done(tmp_path)
    for stage, state in (("distill-depth", "failed"), ("distill-width", "cancelled")):
        doc = read_json(layout.stage_status_file(stage))
        doc["state"] = state
        write_json(layout.stage_status_file(stage), doc)
    plans = {p.stage: p for p in stage_actions(exp, layout)}
    assert plans["distill-depth"].action == "resume" and "failed" in plans["distill-depth"].reason
    assert plans["distill-width"].action == "resume"
    assert plans["prune-depth"].action == "skip"
    assert plans["eval"].action == "run"  # its inputs run again


def test_dead_running_stage_resumes_and_live_one_blocks(tmp_path):
    exp, layout = _all_done(tmp_path)
    doc = read_json(layout.stage_status_file("finetune"))
    doc.update(state="running", pid=2**22 + 12345)  # no such process: the stage died
    write_json(layout.stage_status_file("finetune"), doc)
    acts = _actions(stage_actions(exp, layout))
    assert acts["finetune"] == "resume" and acts["distill-width"] == "run"
    import os

    doc.update(pid=os.getpid())  # alive: another orchestrator's stage is still at work
    write_json(layout.stage_status_file("finetune"), doc)
    with pytest.raises(RunBusy, match="still running"):
        stage_actions(exp, layout)


def test_missing_output_and_newer_input_rerun(tmp_path):
    exp, layout = _all_done(tmp_path)
    (layout.model_dir("distill-depth") / "config.json").unlink()
    # prune-width ran again after distill-width had started (e.g. `run --only prune-width`)
    doc = read_json(layout.stage_status_file("prune-width"))
    doc["ended_at"] = "2999-01-01T00:00:00+00:00"
    write_json(layout.stage_status_file("prune-width"), doc)
    plans = {p.stage: p for p in stage_actions(exp, layout)}
    assert plans["distill-depth"].action == "run" and plans["distill-depth"].reason == "output missing"
    assert plans["distill-width"].action == "run" and "prune-width" in plans["distill-width"].reason
    assert plans["prune-depth"].action == "skip"


def test_only_and_from_selection(tmp_path):
    exp, layout = _all_done(tmp_path)
    with pytest.raises(ConfigError, match="matches prune-width, distill-width"):
        stage_actions(exp, layout, only=["width"])
    with pytest.raises(ConfigError, match="no stage 'nope'"):
        stage_actions(exp, layout, from_stage="nope")
    acts = _actions(stage_actions(exp, layout, only=["distill-width"]))
    assert acts["distill-width"] == "run" and acts["prune-width"] == "excluded"
    acts = _actions(stage_actions(exp, layout, from_stage="prune-width"))
    assert [s for s in ALL if acts[s] == "run"] == ["prune-width", "distill-depth", "distill-width", "eval"]


def test_only_needs_its_inputs(tmp_path):
    exp = _exp(tmp_path)
    layout = RunLayout(exp.run_dir)
    _succeed(exp, layout, "prepare")
    with pytest.raises(ConfigError, match="--only distill-depth needs finetune"):
        stage_actions(exp, layout, only=["distill-depth"])


def test_clear_stage_keeps_the_log(tmp_path):
    layout = RunLayout(tmp_path / "r")
    d = layout.stage_dir("finetune")
    (d / "checkpoints" / "step-10").mkdir(parents=True)
    (d / "metrics.jsonl").write_text("{}\n")
    (d / "stdout.log").write_text("old attempt\n")
    (d / "model").mkdir()
    (d / "model" / "config.json").write_text("{}")
    clear_stage(layout, "finetune", keep_state=True)  # the trainer judges its own checkpoints
    assert sorted(p.name for p in d.iterdir()) == ["checkpoints", "metrics.jsonl", "stdout.log"]
    clear_stage(layout, "finetune")
    assert sorted(p.name for p in d.iterdir()) == ["stdout.log"]


def test_what_a_rerun_keeps(tmp_path):
    _all_done(tmp_path)
    exp = _exp(tmp_path, "prune.width.hidden_size=48", "finetune.steps=20")
    plans = {p.stage: p for p in stage_actions(exp, RunLayout(exp.run_dir))}
    # more teacher steps: the trainer may continue from its checkpoint; everything after starts afresh
    assert plans["finetune"].keep_state and plans["finetune"].reason == "configuration changed"
    assert not plans["distill-width"].keep_state and plans["distill-width"].reason == "input finetune reruns"


def test_busy_run_is_refused(tmp_path):
    import os

    layout = RunLayout(tmp_path / "r")
    write_json(layout.status_file, {"state": "running", "pid": os.getppid(), "host": __import__("socket").gethostname()})
    with pytest.raises(RunBusy, match="already running"):
        check_not_busy(layout)
    write_json(layout.status_file, {"state": "running", "pid": 2**22 + 999, "host": __import__("socket").gethostname()})
    check_not_busy(layout)  # a dead orchestrator does not block a rerun


# ---- the orchestrator loop with stand-in stages ---------------------------------------------------


@pytest.fixture
def fake_stages(monkeypatch):
    def build(exp, stage, toml, runs_dir, gpus, **kw):
        argv = [sys.executable, str(FAKE), *engine_args(stage, toml, runs_dir), "--gpus", ",".join(map(str, gpus))]
        return StageCommand(stage, argv, gpus, launch_env())

    monkeypatch.setattr(orchestrator, "build_stage_command", build)
    monkeypatch.setenv("FAKE_SLEEP", "0")
    monkeypatch.delenv("FAKE_FAIL", raising=False)


def _orchestrate(exp, pool=(), **plan_kw) -> tuple[int, str, RunLayout]:
    layout = RunLayout(exp.run_dir)
    exp = write_experiment(exp, layout)
    plans = stage_actions(exp, layout, **plan_kw)
    buf = io.StringIO()
    rc = Orchestrator(exp, layout, plans, list(pool), list(pool), tail=True, out=buf).run()
    return rc, buf.getvalue(), layout


def _attempts(layout: RunLayout, stage: str) -> int:
    log = layout.log_file(stage)
    return log.read_text().count("===== ") if log.exists() else 0


def test_orchestrator_runs_in_order_and_caches(tmp_path, fake_stages):
    exp = _exp(tmp_path)
    rc, out, layout = _orchestrate(exp)
    assert rc == 0, out
    status = read_json(layout.status_file)
    assert status["state"] == "succeeded" and status["pid"] > 0 and status["ended_at"]
    starts = [json.loads((layout.stage_dir(s) / "fake_times.jsonl").read_text())["start"] for s in ALL]
    assert starts == sorted(starts)
    for s in ALL:
        st = read_json(layout.stage_status_file(s))
        assert st["state"] == "succeeded" and st["config_hash"] == exp.stage_hash(s)
        assert "fake " + s + " done" in layout.log_file(s).read_text()
    assert "fake eval done" in out  # the stage output is followed on the terminal
    # again: nothing reruns; a changed student reruns its own stages and eval only
    rc, out, _ = _orchestrate(_exp(tmp_path))
    assert rc == 0 and all(_attempts(layout, s) == 1 for s in ALL)
    rc, out, _ = _orchestrate(_exp(tmp_path, "prune.depth.num_layers=3"))
    assert rc == 0
    assert {s: _attempts(layout, s) for s in ALL} == {
        "prepare": 1, "finetune": 1, "prune-depth": 2, "prune-width": 1, "distill-depth": 2, "distill-width": 1,
        "eval": 2}


def test_failure_stops_the_pipeline_and_rerun_resumes(tmp_path, fake_stages, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_FAIL", "prune-width")
    exp = _exp(tmp_path)
    rc, out, layout = _orchestrate(exp)
    assert rc == 1
    assert "prune-width: FAILED" in out and "planted failure" in layout.log_file("prune-width").read_text()
    status = read_json(layout.status_file)
    assert status["state"] == "failed" and "prune-width" in status["error"]["message"]
    assert read_json(layout.stage_status_file("prune-width"))["state"] == "failed"
    assert not layout.stage_dir("distill-depth").exists()  # nothing started after the failure
    assert "error: stage prune-width failed" in capsys.readouterr().err
    rc, out, _ = _orchestrate(_exp(tmp_path))
    assert rc == 0, out
    assert "prune-width: resume (resume after failed)" in out
    assert {s: _attempts(layout, s) for s in ALL}["prune-width"] == 2
    assert all(_attempts(layout, s) == 1 for s in ALL if s != "prune-width")


def test_a_stages_user_error_makes_run_exit_2(tmp_path, fake_stages, monkeypatch, capsys):
    """Issue 25: what only prepare can know (seq_length against the tokenized data) exits 2, like the
    checks before it, not 1 as an engine failure."""
    monkeypatch.setenv("FAKE_USER_ERROR", "prepare")
    rc, out, layout = _orchestrate(_exp(tmp_path))
    assert rc == 2, out
    assert "error: stage prepare failed" in capsys.readouterr().err


def test_ctrl_c_reaches_the_stage_through_the_orchestrator_only(tmp_path, fake_stages, monkeypatch):
    """Issue 25: a stage runs in its own session, so the terminal's Ctrl-C reaches the orchestrator alone
    (accelerate's launcher, given it, kills its child 5 s later, mid-checkpoint); the orchestrator passes a
    SIGTERM to the stage, which stops as cancelled."""
    import os
    import signal
    import threading
    import time

    monkeypatch.setenv("FAKE_SLEEP", "20")  # without the fix, prepare sleeps it out and succeeds
    exp = _exp(tmp_path)
    status = RunLayout(exp.run_dir).stage_status_file("prepare")

    def ctrl_c_once_the_stage_runs() -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:  # a guard only
            doc = read_json(status) or {}
            if doc.get("pid") and doc.get("pgid") == doc.get("pid"):  # the stage's own doc: its own session
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.01)

    threading.Thread(target=ctrl_c_once_the_stage_runs, daemon=True).start()
    rc, out, layout = _orchestrate(exp)
    assert rc == 130, out
    assert "==> cancelling (SIGINT): the running stages finish their step and save a checkpoint" in out
    assert read_json(layout.stage_status_file("prepare"))["state"] == "cancelled"


def test_ctrl_c_twice_kills_the_stages_now(tmp_path, fake_stages, monkeypatch):
    """The second Ctrl-C means now: a stage that has not stopped yet is killed (the user decides)."""
    import os
    import signal
    import threading
    import time

    monkeypatch.setenv("FAKE_SLEEP", "60")
    monkeypatch.setenv("FAKE_IGNORE_TERM", "prepare")
    exp = _exp(tmp_path)
    layout = RunLayout(exp.run_dir)
    exp = write_experiment(exp, layout)
    said = threading.Event()

    class Out(io.StringIO):
        def write(self, text: str) -> int:
            if "==> cancelling (SIGINT)" in text:
                said.set()
            return super().write(text)

    def ctrl_c_twice() -> None:
        t0 = time.monotonic()
        while not (layout.stage_dir("prepare") / "fake_ignoring_term").exists():
            if time.monotonic() - t0 > 60:  # a guard only
                return
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        if said.wait(60):  # the first one was handled: the orchestrator said it is cancelling
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_twice, daemon=True).start()
    out = Out()
    rc = Orchestrator(exp, layout, stage_actions(exp, layout), [], [], tail=True, out=out).run()
    assert rc == 130, out.getvalue()
    st = read_json(layout.stage_status_file("prepare"))
    assert st["state"] == "cancelled" and st["error"] == {"type": "Cancelled", "message": "cancelled by SIGINT"}, st
    assert not (layout.stage_dir("prepare") / "fake_times.jsonl").exists()  # it never finished its sleep


def test_a_stage_that_dies_without_reporting_is_failed(tmp_path, monkeypatch):
    def build(exp, stage, toml, runs_dir, gpus, **kw):
        return StageCommand(stage, [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], gpus, {})

    monkeypatch.setattr(orchestrator, "build_stage_command", build)
    rc, out, layout = _orchestrate(_exp(tmp_path))
    assert rc == 1
    st = read_json(layout.stage_status_file("prepare"))
    assert st["state"] == "failed" and "exited with code 3" in st["error"]["message"]
    assert "boom" in layout.log_file("prepare").read_text()


def test_parallel_distill_on_disjoint_gpu_sets(tmp_path, fake_stages, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "1.5")
    exp = _exp(tmp_path, "launch.parallel=true")
    layout = RunLayout(exp.run_dir)
    for s in ALL[:4]:
        _succeed(exp, layout, s)
    rc, out, layout = _orchestrate(exp, pool=[0, 1, 2, 3])
    assert rc == 0, out
    runs = {s: json.loads((layout.stage_dir(s) / "fake_times.jsonl").read_text())
            for s in ("distill-depth", "distill-width", "eval")}
    d, w = runs["distill-depth"], runs["distill-width"]
    assert d["start"] < w["end"] and w["start"] < d["end"], "the two distill stages did not overlap"
    assert {d["gpus"], w["gpus"]} == {"0,1", "2,3"}
    assert runs["eval"]["start"] >= max(d["end"], w["end"]) and runs["eval"]["gpus"] == "0"


def test_sequential_without_parallel(tmp_path, fake_stages):
    exp = _exp(tmp_path)
    layout = RunLayout(exp.run_dir)
    for s in ALL[:4]:
        _succeed(exp, layout, s)
    rc, out, layout = _orchestrate(exp, pool=[0, 1, 2, 3])
    assert rc == 0, out
    d, w = (json.loads((layout.stage_dir(s) / "fake_times.jsonl").read_text()) for s in ("distill-depth", "distill-width"))
    assert d["end"] <= w["start"] and d["gpus"] == w["gpus"] == "0,1,2,3"


# ---- cancel: escalation and orphans ---------------------------------------------------------------

_STUBBORN = r"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a hung process: only SIGKILL stops it
if sys.argv[1] == "orchestrator":
    # like torchrun: the rank gets its own session, and starts a helper of its own
    subprocess.Popen([sys.executable, __file__, "rank"], start_new_session=True)
elif sys.argv[1] == "rank":
    subprocess.Popen([sys.executable, __file__, "helper"])
    with open(os.environ["RANK_PID_FILE"], "w") as f:
        f.write(str(os.getpid()))
time.sleep(300)
"""


def test_cancel_kills_hung_processes_and_their_groups(tmp_path):
    import os
    import socket

    import psutil

    from engine.contract import now_iso
    from engine.orchestration.cancel import cancel_run

    script = tmp_path / "stubborn.py"
    script.write_text(_STUBBORN)
    layout = RunLayout(tmp_path / "runs" / "r")
    started = now_iso()
    orch = __import__("subprocess").Popen([sys.executable, str(script), "orchestrator"], start_new_session=True,
                                          env={**os.environ, "RANK_PID_FILE": str(tmp_path / "rank.pid")})
    import time

    end = time.monotonic() + 30
    while not (tmp_path / "rank.pid").exists() and time.monotonic() < end:
        time.sleep(0.1)
    rank_pid = int((tmp_path / "rank.pid").read_text())
    family = [psutil.Process(orch.pid), *psutil.Process(orch.pid).children(recursive=True)]
    assert len(family) == 3 and os.getpgid(rank_pid) == rank_pid
    host = socket.gethostname()
    write_json(layout.status_file, {"state": "running", "pid": orch.pid, "pgid": orch.pid, "host": host,
                                    "started_at": started, "stages": {"distill-x": {"state": "running"}}})
    write_json(layout.stage_status_file("distill-x"), {"stage": "distill-x", "state": "running", "pid": rank_pid,
                                                       "host": host, "started_at": started})
    buf = io.StringIO()
    t0 = time.monotonic()
    assert cancel_run(layout.root, grace=1.0, out=buf) == 0
    orch.wait(5)
    _, alive = psutil.wait_procs(family, timeout=5)
    assert not alive, buf.getvalue()
    assert "SIGKILL sent to" in buf.getvalue() and time.monotonic() - t0 < 15
    assert read_json(layout.status_file)["state"] == "cancelled"
    assert read_json(layout.stage_status_file("distill-x"))["state"] == "cancelled"
    # nothing left to stop: says so and succeeds
    buf = io.StringIO()
    assert cancel_run(layout.root, grace=1.0, out=buf) == 0 and "nothing is running" in buf.getvalue()


def test_cancel_refuses_what_is_not_a_run(tmp_path):
    from engine.orchestration.cancel import cancel_run

    with pytest.raises(ConfigError, match="no such run directory"):
        cancel_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a run directory"):
        cancel_run(tmp_path / "empty")


# ---- compare ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type,tied", [("llama", True), ("llama", False), ("qwen2", False), ("qwen3", True)])
def test_param_count_matches_transformers(model_type, tied):
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.contract.compare_rows import config_params  # compare's and the TUI's count

    cfg = AutoConfig.for_model(model_type, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=97,
                               tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(cfg)
    assert config_params(cfg.to_dict()) == sum(p.numel() for p in model.parameters())


def test_compare_reads_metrics_when_eval_has_not_run(tmp_path):
    from rich.console import Console

    from engine.compare import compare
    from engine.contract import append_metrics

    exp = _exp(tmp_path)
    layout = RunLayout(exp.run_dir)
    write_experiment(exp, layout)
    for name, layers, pruned, losses in (("depth", 2, 7.5, [7.0, 6.1, 5.9]), ("width", 4, 8.0, [6.8, 6.0, 5.7])):
        cfg = {"model_type": "llama", "hidden_size": 64 if name == "depth" else 32, "intermediate_size": 128,
               "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
               "vocab_size": 512, "tie_word_embeddings": True}
        write_json(layout.model_dir(f"distill-{name}") / "config.json", cfg)
        layout.stage_dir(f"prune-{name}").mkdir(parents=True)
        append_metrics(layout.metrics_file(f"prune-{name}"), {"step": 0, "split": "val", "loss": pruned})
        for i, loss in enumerate(losses):
            append_metrics(layout.metrics_file(f"distill-{name}"),
                           {"step": i + 1, "split": "train", "loss": 0.1, "tokens": (i + 1) * 256, "tokens_per_s": 1000.0})
            append_metrics(layout.metrics_file(f"distill-{name}"), {"step": i + 1, "split": "val", "loss": loss})
    with open(layout.metrics_file("distill-width"), "a") as f:
        f.write('{"step": 4, "split": "val", "lo')  # a line being written right now
    console = Console(record=True, width=120)
    rows = {r.label: r for r in compare([layout.root], console=console)}
    assert rows["depth"].pruned_loss == 7.5 and rows["depth"].distilled_loss == 5.9
    assert rows["width"].distilled_loss == 5.7 and rows["width"].layers == 4 and rows["width"].hidden == 32
    assert rows["width"].tokens == 768 and rows["width"].tokens_per_s == 1000.0
    text = console.export_text()
    assert any(ln.split()[:1] == ["depth"] and "5.900" in ln for ln in text.splitlines())
    assert "validation loss while distilling" in text
    report = (layout.root / "report.md").read_text()
    assert "7.500 after pruning -> 5.900 after distillation" in report
    assert (layout.root / "val_loss.png").read_bytes()[:4] == b"\x89PNG"


def test_the_run_file_resumes_in_place(tmp_path, monkeypatch, fake_stages):
    from engine.orchestration.run import RunOptions, load_for_run

    rc, _, layout = _orchestrate(_exp(tmp_path))
    assert rc == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    exp = load_for_run(RunOptions(file=str(layout.experiment_file)))
    assert exp.run_dir.resolve() == layout.root.resolve()
    # an ordinary experiment file still uses its own runs_dir, relative to the working directory
    exp = load_for_run(RunOptions(file=str(tmp_path / "exp.toml")))
    assert exp.run_dir == Path("runs") / "pipe"


def test_dry_run_prints_the_port_the_run_uses(tmp_path, monkeypatch, capsys):
    """Across nodes the rendezvous port is [launch].main_process_port, not a fixed 29500; on one node
    a free port, as the orchestrator picks it."""
    from engine.cli import main

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    f = tmp_path / "exp.toml"
    f.write_text(TOML)
    runs = str(tmp_path / "runs")
    multi = ["--set", "launch.nodes=2", "--set", "launch.main_process_ip=10.0.0.1",
             "--set", "launch.main_process_port=31337"]
    assert main(["run", str(f), "--runs-dir", runs, "--dry-run", "--gpus", "0,1", *multi]) == 0
    out = capsys.readouterr().out
    assert "--main_process_port 31337" in out and "29500" not in out
    monkeypatch.setattr("engine.orchestration.launch.free_port", lambda: 40404)
    assert main(["run", str(f), "--runs-dir", runs, "--dry-run", "--gpus", "0,1"]) == 0
    assert "--main_process_port 40404" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_a_diverged_stage_is_flagged_in_the_log_status_json_and_status(tmp_path, fake_stages, monkeypatch):
    """At lr 1.0 validation loss went 10.4 -> 45.4 and the stage 'succeeded' without a word."""
    from rich.console import Console

    from engine.orchestration.commands import print_run, run_summary

    monkeypatch.setenv("FAKE_VAL", "finetune:10.4,6.0,45.4")
    rc, out, layout = _orchestrate(_exp(tmp_path))
    assert rc == 0
    assert "==> finetune: WARNING: validation loss 45.4 at step 3 is well above its best 6 (step 2)" in out
    stages = read_json(layout.status_file)["stages"]
    assert "well above its best" in stages["finetune"]["warning"] and stages["distill-width"]["warning"] is None
    console = Console(file=io.StringIO(), width=300)
    print_run(run_summary(layout.root), console)
    assert "finetune: warning: validation loss 45.4" in console.file.getvalue()


def test_fail_on_divergence_fails_the_stage_and_stops_the_run(tmp_path, fake_stages, monkeypatch):
    """Issue 25: divergence ended "succeeded", exit 0; with fail_on_divergence it fails and nothing after it runs,
    and the run list and compare flag it either way."""
    from engine.compare.report import run_warnings
    from engine.orchestration.commands import _diverged, run_summary

    monkeypatch.setenv("FAKE_VAL", "finetune:10.4,6.0,45.4")
    rc, out, layout = _orchestrate(_exp(tmp_path, "finetune.fail_on_divergence=true"))
    assert rc == 1
    assert "==> finetune: FAILED (fail_on_divergence): validation loss 45.4 at step 3" in out
    st = read_json(layout.stage_status_file("finetune"))
    assert st["state"] == "failed" and st["error"]["type"] == "Diverged"
    assert read_json(layout.status_file)["stages"]["prune-depth"]["state"] == "pending"
    assert _diverged(run_summary(layout.root)) == "⚠ val loss rose: finetune"
    st.update(state="succeeded", error=None)  # as without the option: compare flags it
    write_json(layout.stage_status_file("finetune"), st)
    assert any("finetune: validation loss 45.4" in w for w in run_warnings(layout.root))


def test_status_shows_the_step_of_the_last_checkpoint(tmp_path):
    """status.json said step 10 while a checkpoint of step 11 (saved on cancel) was there."""
    from engine.orchestration.commands import run_summary

    layout = RunLayout(tmp_path / "r")
    write_json(layout.status_file, {"state": "cancelled", "stages": {"finetune": {}}})
    write_json(layout.stage_status_file("finetune"), {"stage": "finetune", "state": "cancelled", "step": 10,
                                                      "total_steps": 20})
    ckpt = layout.checkpoints_dir("finetune") / "step-00000011"
    ckpt.mkdir(parents=True)
    write_json(ckpt / "trainer_state.json", {"step": 11})
    assert run_summary(layout.root)["stages"][0]["step"] == 11
