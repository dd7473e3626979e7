"""What one decoder layer keeps for backward, tensor by tensor, against the activation model
(engine/resources/memory.py layer_activation_bytes): on the device this runs on (CUDA's SDPA kernels save
other tensors than the CPU's), eager, as the search's distill score and audit train.

    python3 benchmarks/saved_activations.py --arch benchmarks/smollm2/smollm2-135m-config.json \
        --ffn 704 --batch 8 --seq 512 [--dtype bfloat16] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch


def main() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.config.shape import shape_from_config
    from engine.models.attention import use_causal_sdpa
    from engine.resources.memory import layer_activation_bytes

    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, help="a config.json")
    ap.add_argument("--ffn", type=int, help="intermediate_size instead of the config's")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--sdpa", default="", choices=["", "math", "flash", "efficient", "cudnn"],
                    help="pin SDPA to one backend (default: PyTorch's choice)")
    ap.add_argument("--no-autocast", action="store_true", help="without bf16 autocast (training runs under it)")
    ap.add_argument("--trace", action="store_true",
                    help="CUDA: list what the forward leaves allocated that autograd did not save, by the code that allocated it")
    ap.add_argument("--json")
    args = ap.parse_args()
    arch = json.load(open(args.arch))
    arch.update(num_hidden_layers=args.layers, **({"intermediate_size": args.ffn} if args.ffn else {}))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    config = AutoConfig.for_model(**{k: v for k, v in arch.items() if k not in ("architectures", "transformers_version")})
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype).to(device)
    use_causal_sdpa(model)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, tuple[int, str]] = {}
    layer_of: dict[int, int] = {}
    current = [-1]

    def pre(i):
        def hook(*_):
            current[0] = i
        return hook

    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(pre(i))

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in weights and st.data_ptr() not in saved:
            saved[st.data_ptr()] = (st.nbytes(), f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}")
            layer_of[st.data_ptr()] = current[0]
        return t

    tokens = args.batch * args.seq
    ids = torch.randint(0, arch["vocab_size"], (args.batch, args.seq), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        if args.trace:
            torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    pinned = sdpa_kernel(backends[args.sdpa]) if args.sdpa else nullcontext()
    cast = nullcontext() if args.no_autocast else torch.autocast(device.type, dtype=torch.bfloat16)
    with pinned, cast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.model(ids, use_cache=False).last_hidden_state
    live = torch.cuda.memory_allocated() - before - out.nbytes if device.type == "cuda" else None
    if device.type == "cuda" and args.trace:
        unsaved(torch.cuda.memory._snapshot(), set(saved) | {out.untyped_storage().data_ptr()}, tokens * args.layers)
    per_layer: dict[int, int] = defaultdict(int)
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ptr, (nbytes, what) in saved.items():
        per_layer[layer_of[ptr]] += nbytes
        if layer_of[ptr] == 0:
            groups[what][0] += 1
            groups[what][1] += nbytes
    e = torch.finfo(dtype).bits // 8
    shape = shape_from_config(arch)
    predicted = layer_activation_bytes(shape, e)
    measured = per_layer[0] / tokens
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), {args.dtype}, "
          f"SDPA {args.sdpa or 'default'}, {'no autocast' if args.no_autocast else 'bf16 autocast'}, {args.batch} x {args.seq} tokens, hidden {shape.hidden_size}, ffn {shape.intermediate_size}")
    print(f"layer 0 saves {measured:,.0f} bytes a token; the model says {predicted:,} ({predicted / measured - 1:+.1%})")
    for what, (n, nbytes) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"  {nbytes / tokens:10,.0f} B/token  {n} x {what}")
    if live is not None:
        print(f"allocated by the forward (all layers, output excluded): {live / tokens / args.layers:,.0f} bytes a "
              f"token and layer; saved: {sum(per_layer.values()) / tokens / args.layers:,.0f}")
    if args.json:
        json.dump({"device": str(device), "per_token_layer0": measured, "predicted": predicted,
                   "groups": {k: v for k, v in groups.items()},
                   "live_per_token_layer": live / tokens / args.layers if live is not None else None},
                  open(args.json, "w"), indent=1)


def unsaved(snapshot: dict, saved: set[int], token_layers: int) -> None:
    """The blocks allocated during the recorded forward and still live, that autograd does not hold."""
    from memory_probe import site  # (benchmarks/ is this script's folder)

    live: dict[int, tuple[int, list[dict]]] = {}
    for ev in snapshot["device_traces"][torch.cuda.current_device()]:
        if ev["action"] == "alloc":
            live[ev["addr"]] = (ev["size"], ev.get("frames", []))
        elif ev["action"] == "free_completed":
            live.pop(ev["addr"], None)
    by_site: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for addr, (size, frames) in live.items():
        if addr not in saved:
            by_site[site(frames)][0] += size
            by_site[site(frames)][1] += 1
    print("live after the forward, not saved by autograd (bytes a token and layer, blocks, where):")
    for where, (size, n) in sorted(by_site.items(), key=lambda kv: -kv[1][0])[:12]:
        print(f"  {size / token_layers:10,.0f}  {n:4d}  {where}")


if __name__ == "__main__":
    main()
