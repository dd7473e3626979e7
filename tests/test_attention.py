"""Mask-free causal SDPA for packed training batches (engine/models/attention.py)."""

from __future__ import annotations

import pytest
import torch
from _util import one_thread  # noqa: F401  (autouse fixture: one torch thread)


def _model(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral"])
def test_causal_sdpa_matches_sdpa_and_builds_no_mask(model_type: str, monkeypatch) -> None:
    import transformers.masking_utils as masking

    from engine.models.attention import CAUSAL_SDPA, restore_sdpa, use_causal_sdpa

    model = _model(model_type, **({"sliding_window": None} if model_type == "mistral" else {}))
    ids = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
    assert use_causal_sdpa(model)
    assert model.config._attn_implementation == CAUSAL_SDPA
    calls = []  # the host-syncing packed-sequence check must not run any more
    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda *a, **k: calls.append(1))
    with torch.no_grad():
        got = model(input_ids=ids, use_cache=False).logits
    assert not calls
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    restore_sdpa(model.config)
    assert model.config._attn_implementation == "sdpa"


def test_sliding_window_and_other_implementations_keep_their_mask() -> None:
    from engine.models.attention import use_causal_sdpa

    sliding = _model("mistral", sliding_window=8)
    assert not use_causal_sdpa(sliding)
    assert sliding.config._attn_implementation == "sdpa"
    eager = _model("llama")
    eager.config._attn_implementation = "eager"
    assert not use_causal_sdpa(eager)
    qwen = _model("qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert not use_causal_sdpa(qwen) and qwen.config._attn_implementation == "sdpa"
