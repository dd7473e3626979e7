"""A Hugging Face folder of a known architecture with random weights, for shape and speed work
(memory and speed do not depend on the values): config, bf16 safetensors and a tokenizer.

    python benchmarks/scratch_model.py --arch meta-llama/Llama-3.1-8B --tokenizer TOK_DIR --out DIR
    python benchmarks/scratch_model.py --arch tiny --tokenizer TOK_DIR --out DIR     # CPU smoke test

--arch names a config of engine.shapes.targets.KNOWN_CONFIGS (the built-in table), "tiny", or a config.json
(e.g. benchmarks/smollm2/smollm2-135m-config.json).
Weights are drawn on the GPU when there is one (an 8B model in seconds) with std 0.02.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

TINY = dict(model_type="llama", vocab_size=32000, hidden_size=64, intermediate_size=192, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
            max_position_embeddings=4096)


def main() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from engine.shapes.targets import KNOWN_CONFIGS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--tokenizer", required=True, help="a tokenizer folder, copied into the model folder")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.arch.endswith(".json"):
        arch = {k: v for k, v in json.loads(Path(args.arch).read_text()).items()
                if not k.startswith("_") and k not in ("architectures", "transformers_version", "dtype")}
    else:
        arch = dict(TINY if args.arch == "tiny" else KNOWN_CONFIGS[args.arch])
    arch.pop("bos_token_id", None), arch.pop("eos_token_id", None)  # the tokenizer's own
    out = Path(args.out)
    if (out / "config.json").exists():
        print(f"{out}: already there")
        return
    t0 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = AutoConfig.for_model(**arch)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(tmp)
    tmp.rename(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{out}: {n:,} parameters, random, bf16, in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
