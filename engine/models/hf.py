"""Load and save Hugging Face causal LMs and tokenizers; build scratch models from an arch table.

Plain Hugging Face in and out: everything written here loads with stock
`AutoModelForCausalLM.from_pretrained`, no custom code.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from engine.config.shape import check_model_type
from engine.errors import UserError
from engine.models.locate import check_model_path, check_tokenizer_path

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def check_supported(model_type: str, where: str) -> None:
    """A UserError naming the supported types unless slimlab supports `model_type`."""
    check_model_type(model_type, where, UserError)


def compute_device() -> torch.device:
    """Where a single-process stage (prune, eval) runs: the current CUDA device, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def load_config(path: str) -> Any:
    check_model_path(path, key=f"model {path}")
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"model {path}: cannot load its config ({str(e).splitlines()[0]}); "
                        "give a local directory with config.json or a reachable hub id") from None


def load_model(path: str, dtype: str = "bfloat16", attn_implementation: str = "sdpa") -> PreTrainedModel:
    """A causal LM from a local directory or hub id, on the CPU, in `dtype`."""
    cfg = load_config(path)
    check_supported(cfg.model_type, str(path))
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype),
                                                    attn_implementation=attn_implementation)
    except (OSError, ValueError) as e:
        raise UserError(f"model {path}: cannot load weights ({str(e).splitlines()[0]})") from None


def build_scratch_model(arch: dict[str, Any], vocab_size: int, dtype: str = "bfloat16",
                        attn_implementation: str = "sdpa", seed: int = 0,
                        bos_token_id: int | None = None, eos_token_id: int | None = None) -> PreTrainedModel:
    """A freshly initialised model from an `arch` table (init = "scratch")."""
    arch = dict(arch)
    model_type = arch.pop("model_type")
    check_supported(model_type, "model.arch")
    arch.setdefault("vocab_size", vocab_size)
    if bos_token_id is not None:
        arch.setdefault("bos_token_id", bos_token_id)
    if eos_token_id is not None:
        arch.setdefault("eos_token_id", eos_token_id)
    try:
        cfg = AutoConfig.for_model(model_type, **arch)
    except (TypeError, ValueError) as e:
        raise UserError(f"model.arch: {e}") from None
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    return model.to(torch_dtype(dtype))


def load_tokenizer(path: str) -> Any:
    check_tokenizer_path(path, key=f"tokenizer {path}")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"tokenizer {path}: cannot be loaded ({str(e).splitlines()[0]}); "
                        "set model.tokenizer to a directory with tokenizer.json or a hub id") from None
    return tok


def save_model(model: PreTrainedModel, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Save as safetensors + config (+ tokenizer) atomically: a temp dir, then rename. Free space is
    checked first; a write that fails anyway leaves no temp dir (a full disk: DiskFull, one line)."""
    from engine.disk_space import disk_full, ensure_free, is_disk_full, tensor_bytes

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    what, need = f"the model ({out.name}/)", tensor_bytes(model.state_dict().values())
    ensure_free(out.parent, what, need)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full(out.parent, what, need) from None
        raise
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
