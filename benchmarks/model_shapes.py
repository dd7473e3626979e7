"""The model shapes the benchmarks build with random weights (memory and speed do not depend on the
values): one place for each, the hub's own where the engine's table (engine.shapes.targets) knows it.

num_hidden_layers is the teacher's; a benchmark may give its teacher and student others.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.shapes.targets import KNOWN_CONFIGS  # noqa: E402


def _shape(hub_id: str, **changes: object) -> dict:
    config = {k: v for k, v in KNOWN_CONFIGS[hub_id].items() if k not in ("bos_token_id", "eos_token_id")}
    return {**config, **changes}


LLAMA31_8B = _shape("meta-llama/Meta-Llama-3-8B")  # Llama-3.1-8B's shapes, an 8k context
LLAMA_1B = _shape("meta-llama/Llama-3.2-1B", max_position_embeddings=8192, rope_theta=500000.0)
SMOLLM2 = dict(model_type="llama", num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
               num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
               max_position_embeddings=2048, rope_theta=100000.0)
