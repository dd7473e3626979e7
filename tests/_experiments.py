"""Experiment files shared by tests of the pipeline's machinery (torch-free to import)."""

from __future__ import annotations


def scratch_toml(name: str, data: str = 'dataset = "builtin:stdlib-docs"', finetune: str = "steps = 2") -> str:
    """A tiny scratch teacher (2 layers, hidden 64, a 512-token BPE vocabulary) with a [finetune] stage:
    the smallest experiment that runs every part of a stage on the CPU."""
    return f"""
name = "{name}"
[model]
init = "scratch"
dtype = "float32"
arch = {{model_type = "llama", hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2}}
tokenizer_train_vocab = 512
[data]
{data}
seq_length = 32
[finetune]
{finetune}
"""
