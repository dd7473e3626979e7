"""A real launch from Compose: `slimlab-engine run FILE --detach` starts the orchestrator in its own
session; quitting the TUI leaves it running; a new TUI shows it again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _app_util import wait_for

from app.main import SlimlabApp
from engine.contract import pid_alive, read_json

ROOT = Path(__file__).resolve().parent.parent

TINY = """
name = "launched"
[model]
init = "scratch"
dtype = "float32"
arch = {model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, num_attention_heads = 2, num_key_value_heads = 1}
tokenizer_train_vocab = 300
[data]
dataset = "builtin:stdlib-docs"
seq_length = 16
workers = 1
max_tokens = 20000
[finetune]
steps = 100000
global_batch_size = 2
micro_batch_size = 2
[launch]
mixed_precision = "no"
"""


@pytest.mark.slow
def test_launch_from_compose_survives_the_tui(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLIMLAB_ENGINE", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    (tmp_path / "experiments").mkdir()
    exp_file = tmp_path / "experiments" / "launched.toml"
    exp_file.write_text(TINY)
    runs = tmp_path / "runs"
    run_dir = runs / "launched"
    pid = None

    async def launch_and_quit():
        app = SlimlabApp(runs_dir=runs, experiments_dir=tmp_path / "experiments", gpu_probe=None, scan_interval=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("2")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "ComposeScreen", 10, "compose")
            app.screen.load_file(exp_file)
            await wait_for(pilot, lambda: app.screen.raw.get("name") == "launched" and app.screen.validation is not None
                        and app.screen.validation.ok, 20, "loaded and valid")
            await pilot.press("ctrl+l")
            await wait_for(pilot, lambda: app.last_command is not None, 60, "launch finished")
            assert app.last_command.ok, app.last_command.output
            assert app.last_command.command[-5:] == ["run", str(exp_file), "--detach", "--runs-dir", str(runs)]
            await wait_for(pilot, lambda: any(r.name == "launched" for r in app.runs), 20, "run in the table")
            # launching shows the new run; quit once it is drawn (Textual fails quitting mid-mount)
            await wait_for(pilot, lambda: type(app.screen).__name__ == "RunDetailScreen" and app.screen.path == run_dir
                           and app.screen.query("#loss-chart") and not app.screen.query_one("#loss-chart").held,
                           20, "the run's detail")
        # the app has quit here

    async def reopen():
        app = SlimlabApp(runs_dir=runs, gpu_probe=None, scan_interval=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            table = app.screen.query_one("#runs-table")
            await wait_for(pilot, lambda: table.row_count == 1, 10, "run listed after reopening")
            run = app.runs[0]
            assert run.name == "launched" and run.state == "running"
            assert str(table.get_cell(str(run_dir), "state").plain) == "● running"

    try:
        asyncio.run(launch_and_quit())
        status = read_json(run_dir / "status.json")
        pid = status["pid"]
        assert os.getsid(pid) == pid != os.getsid(0)  # the orchestrator leads its own session
        time.sleep(0.5)
        assert pid_alive(pid), (run_dir / "orchestrator.log").read_text()  # the TUI has quit; the run goes on
        asyncio.run(reopen())
    finally:
        if run_dir.exists():
            subprocess.run([sys.executable, "-m", "engine", "cancel", str(run_dir), "--grace", "5"],
                           capture_output=True, timeout=120, cwd=ROOT)
        if pid is not None:
            t0 = time.monotonic()
            while pid_alive(pid) and time.monotonic() - t0 < 30:
                time.sleep(0.1)
            assert not pid_alive(pid)
