"""Tiny random models of the four supported architectures, for the pruning tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

# model_type -> config keys; together they cover tied/untied, GQA/MHA, biases, q/k norms and a
# head_dim that differs from hidden_size // num_attention_heads.
ARCHS: dict[str, dict] = {
    "llama": dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                  tie_word_embeddings=True),
    "mistral": dict(hidden_size=32, intermediate_size=40, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=12, tie_word_embeddings=False, sliding_window=None),
    "qwen2": dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                  tie_word_embeddings=False),
    "qwen3": dict(hidden_size=24, intermediate_size=40, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, tie_word_embeddings=True),
}
VOCAB = 61


def tiny_model(model_type: str, layers: int = 3, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random fp32 model; every weight (norms, biases included) is random so that it matters."""
    kw = {"vocab_size": VOCAB, "num_hidden_layers": layers, "max_position_embeddings": 64, "bos_token_id": 1,
          "eos_token_id": 2, **ARCHS[model_type], **overrides}
    cfg = AutoConfig.for_model(model_type, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def tokens(batch: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=g)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def write_prepared(data: Path, vocab_size: int, seq: int, train: int = 40, validation: int = 10,
                   test: int = 0) -> None:
    """What the prepare stage writes, of random tokens: `train`, `validation` (and `test`, when > 0) windows
    of `seq` tokens (+1 for the shifted labels) and meta.json, so that a prune or distill stage runs without a
    prepare stage."""
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    splits = {"train": train * seq + 1, "validation": validation * seq + 1} | ({"test": test * seq + 1} if test else {})
    for split, n in splits.items():
        rng.integers(3, vocab_size, size=n).astype(np.uint16).tofile(data / f"{split}.bin")
    (data / "meta.json").write_text(json.dumps({
        "vocab_size": vocab_size, "dtype": "uint16", "eos_token_id": 2, "bos_token_id": 1, "tokenizer": "test",
        "tokenizer_hash": "x", "splits": {s: {"tokens": n, "documents": 1} for s, n in splits.items()}}))
