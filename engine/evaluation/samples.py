"""Greedy samples: the same prompts for every model, so their text can be read side by side.

Prompts are `[eval] prompts`, or the starts of the first 3 validation documents (their first
PROMPT_TOKENS tokens, decoded). Each sample is {"prompt": ..., "text": the continuation only}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_PROMPTS = 3
PROMPT_TOKENS = 24


def default_prompts(data_dir: str | Path, tokenizer: Any, count: int = DEFAULT_PROMPTS,
                    split: str = "validation") -> list[str]:
    """The starts of the first `count` documents of `split` of a prepared data directory."""
    from engine.data.dataset import split_documents, split_tokens

    tokens, offsets = split_tokens(data_dir, split), split_documents(data_dir, split)
    out: list[str] = []
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        if len(out) == count:
            break
        ids = [int(t) for t in tokens[a:min(b, a + PROMPT_TOKENS)] if int(t) != tokenizer.eos_token_id]
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        if text:
            out.append(text)
    return out


@torch.inference_mode()
def generate_samples(model: nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[dict[str, str]]:
    """Greedy continuations of each prompt (one at a time: no padding, the same text at any batch)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
            limit = getattr(model.config, "max_position_embeddings", None)
            if limit:
                ids = ids[:, -max(1, limit - max_new_tokens):]
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            text = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            out.append({"prompt": prompt, "text": text})
    finally:
        model.train(was_training)
    return out
