"""A Trainer hooks itself into its accelerator (checkpoint save/load hooks); `release` unhooks it, so that a
second Trainer on the same accelerator (benchmarks, a library user's loop) does not keep the first one's models
and optimizer alive."""

import gc
import weakref

import torch


def _trainer(acc):
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.config import TrainConfig
    from engine.distill.losses import LossSpec
    from engine.training.step import Trainer

    arch = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8)
    cfg = TrainConfig(steps=2, global_batch_size=2, micro_batch_size=2, warmup_steps=0)
    return Trainer(acc, LlamaForCausalLM(LlamaConfig(**arch)), cfg, LossSpec("ce", chunk_tokens=8),
                   master_weights=True)


def test_a_released_trainer_is_freed_while_its_accelerator_lives():
    from engine.training.setup import make_accelerator

    torch.manual_seed(0)
    acc = make_accelerator()
    kept, freed = _trainer(acc), _trainer(acc)
    kept_ref, freed_ref = weakref.ref(kept), weakref.ref(freed)
    freed.release()
    del kept, freed
    acc.free_memory()
    gc.collect()
    assert freed_ref() is None
    assert kept_ref() is not None  # not released: the accelerator's hooks still hold it
