"""Settings for the whole test session."""

import os

# The Triton kernels (engine/training/adamw_triton.py, engine/distill/kl_triton.py) run in Triton's CPU
# interpreter in the tests. Triton decorates its own helpers (e.g. tl.max's combine function) when
# first imported, and torch.compile imports it in earlier tests: the switch must be on from the start.
os.environ["TRITON_INTERPRET"] = "1"
