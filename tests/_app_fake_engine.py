"""Stand-in for `slimlab-engine` in TUI tests (SLIMLAB_ENGINE="python _app_fake_engine.py"):
records the command it got, its session and process group, then exits like `run --detach`."""

import json
import os
import sys

out = os.environ["SLIMLAB_FAKE_ENGINE_OUT"]
with open(out, "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
                        "cwd": os.getcwd()}) + "\n")
print(f"fake engine: {' '.join(sys.argv[1:])}")
