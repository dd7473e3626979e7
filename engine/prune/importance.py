"""Minitron importance scores from forward-only calibration.

One hooked forward pass per calibration batch gives every score at once:

- MLP neurons: |activation entering down_proj|            -> mlp [layers, ffn]
- attention heads: L2 norm per head of what enters o_proj -> heads [layers, heads]
  (a KV group scores the sum of its query heads)
- embedding channels: |output| of both norms of every layer, summed over layers -> hidden [hidden]
- layers: block influence 1 - cos(input, output) per token, and the angular distance
  arccos(cos)/pi between the hidden states before layer i and before layer j (for the best
  contiguous block to drop, Gromov et al. 2024)

Each activation is first aggregated over the sequence (`seq_agg`: mean | l2 | max of
magnitudes), then over the samples (`batch_agg`: l2 | mean | max), as in the Minitron paper
(mean over sequence, L2 over batch by default). Every accumulator lives on the model's device
and is updated in place: no host sync per batch, no Python loop over heads.

LM-loss layer scores (the loss increase when one layer is skipped) cost one extra forward per
layer and batch, so they are computed only when asked for (`lm_loss=True`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.config.shape import Shape
from engine.contract import read_json, write_json
from engine.errors import UserError
from engine.evaluation.loss import lm_loss_sum
from engine.models.adapter import Arch

VERSION = 1


@dataclass
class Importance:
    mlp: torch.Tensor  # [layers, ffn]
    heads: torch.Tensor  # [layers, heads]
    hidden: torch.Tensor  # [hidden]
    block_influence: torch.Tensor  # [layers]
    angular: torch.Tensor | None  # [layers + 1, layers + 1]: distance between layer boundaries i < j
    lm_loss: torch.Tensor | None = None  # [layers]: loss increase when the layer is skipped
    base_loss: float | None = None
    kind: str = "activation"  # activation | random
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.mlp.shape[0]

    def for_layers(self, kept: list[int]) -> Importance:
        """The scores of the kept layers only, renumbered 0..len(kept)-1 (width pruning after a depth
        cut). Embedding channels keep their scores summed over every teacher layer."""
        idx = torch.as_tensor(kept, dtype=torch.long)

        def rows(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, idx.to(t.device))

        return Importance(mlp=rows(self.mlp), heads=rows(self.heads), hidden=self.hidden,
                          block_influence=rows(self.block_influence), angular=None, lm_loss=rows(self.lm_loss),
                          base_loss=self.base_loss, kind=self.kind, meta=self.meta)

    def kv_groups(self, num_kv_heads: int) -> torch.Tensor:
        """[layers, kv]: a KV group's score is the sum of its query heads' scores."""
        n, h = self.heads.shape
        return self.heads.view(n, num_kv_heads, h // num_kv_heads).sum(-1)

    # ---- importance.json ------------------------------------------------------------
    def to_json(self, shape: Shape) -> dict[str, Any]:
        def rows(t: torch.Tensor | None) -> Any:
            if t is None:
                return None
            return _rounded(t.detach().float().cpu().tolist())

        return {
            "version": VERSION,
            "kind": self.kind,
            "model": {"model_type": shape.model_type, "num_layers": shape.num_layers,
                      "hidden_size": shape.hidden_size, "intermediate_size": shape.intermediate_size,
                      "num_attention_heads": shape.num_heads, "num_key_value_heads": shape.num_kv_heads,
                      "head_dim": shape.head_dim},
            "calibration": self.meta,
            "layers": {
                "block_influence": rows(self.block_influence),
                "lm_loss_increase": rows(self.lm_loss),
                "base_loss": self.base_loss,
                "angular_distance": rows(self.angular),
            },
            "mlp_neurons": rows(self.mlp),
            "attention_heads": rows(self.heads),
            "kv_groups": rows(self.kv_groups(shape.num_kv_heads)),
            "hidden_channels": rows(self.hidden),
        }

    def save(self, path: str | Path, shape: Shape) -> None:
        write_json(path, self.to_json(shape))

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Importance:
        def t(x: Any) -> torch.Tensor | None:
            return None if x is None else torch.tensor(x, dtype=torch.float32)

        layers = doc["layers"]
        return cls(mlp=t(doc["mlp_neurons"]), heads=t(doc["attention_heads"]), hidden=t(doc["hidden_channels"]),
                   block_influence=t(layers["block_influence"]), angular=t(layers.get("angular_distance")),
                   lm_loss=t(layers.get("lm_loss_increase")), base_loss=layers.get("base_loss"),
                   kind=doc.get("kind", "activation"), meta=doc.get("calibration", {}))


def _rounded(x: Any) -> Any:
    """6 significant digits keep importance.json small (ranking needs no more)."""
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return float(f"{x:.6g}") if math.isfinite(x) else None


def load_importance(path: str | Path, shape: Shape) -> Importance:
    """An importance.json (file or a stage directory holding one), checked against `shape`."""
    p = Path(path)
    if p.is_dir():
        p = p / "importance.json"
    doc = read_json(p)
    if doc is None:
        raise UserError(f"importance_from: cannot read {p}; give an importance.json written by a prune stage")
    m = doc.get("model", {})
    want = {"num_layers": shape.num_layers, "hidden_size": shape.hidden_size,
            "intermediate_size": shape.intermediate_size, "num_attention_heads": shape.num_heads,
            "num_key_value_heads": shape.num_kv_heads}
    diff = [f"{k} {m.get(k)} != {v}" for k, v in want.items() if m.get(k) != v]
    if diff:
        raise UserError(f"importance_from: {p} was computed for another model ({diff[0]}); "
                        "calibrate again by removing importance_from")
    return Importance.from_json(doc)


def random_importance(shape: Shape, seed: int) -> Importance:
    """Seeded random scores of the right shapes: the ablation baseline for activation scores."""
    g = torch.Generator().manual_seed(seed)
    n = shape.num_layers

    def r(*size: int) -> torch.Tensor:
        return torch.rand(*size, generator=g)

    ang = torch.triu(r(n + 1, n + 1), diagonal=1)
    return Importance(mlp=r(n, shape.intermediate_size), heads=r(n, shape.num_heads), hidden=r(shape.hidden_size),
                      block_influence=r(n), angular=ang, lm_loss=r(n), base_loss=None, kind="random",
                      meta={"seed": seed})


# ---- the hooks --------------------------------------------------------------------------


def _seq_reduce(x: torch.Tensor, how: str, dim: int) -> torch.Tensor:
    """Aggregate magnitudes over the sequence in one reduction kernel, accumulating in fp32."""
    if how == "mean":
        return torch.linalg.vector_norm(x, ord=1, dim=dim, dtype=torch.float32) / x.shape[dim]
    if how == "l2":
        return torch.linalg.vector_norm(x, ord=2, dim=dim, dtype=torch.float32)
    return torch.linalg.vector_norm(x, ord=math.inf, dim=dim, dtype=torch.float32)


class _BatchAcc:
    """Running aggregate over samples of per-sample scores [samples, channels], on device."""

    def __init__(self, rows: int, cols: int, how: str, device: torch.device):
        self.how = how
        self.value = torch.zeros(rows, cols, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, row: int | slice, s: torch.Tensor) -> None:
        """s: [batch, cols] (or [batch, k, cols] for a slice of rows)."""
        if self.how == "l2":
            self.value[row] += s.square().sum(0)
        elif self.how == "mean":
            self.value[row] += s.sum(0)
        else:
            torch.maximum(self.value[row], s.amax(0), out=self.value[row])

    def result(self) -> torch.Tensor:
        if self.how == "l2":
            return self.value.sqrt()
        if self.how == "mean":
            return self.value / max(self.n, 1)
        return self.value


class Calibrator:
    """Hooks on a supported model that accumulate every importance score during forwards.

    Use as a context manager (the hooks are removed on exit); `run(batch)` does one hooked
    forward pass of the decoder (no lm_head) on token ids [batch, seq].
    """

    def __init__(self, model: nn.Module, batch_agg: str = "l2", seq_agg: str = "mean",
                 pairwise_tokens: int = 2048):
        self.arch = Arch(model)
        self.model = model
        s = self.arch.shape
        self.shape = s
        self.batch_agg, self.seq_agg = batch_agg, seq_agg
        self.pairwise_tokens = pairwise_tokens
        dev = next(model.parameters()).device
        n = s.num_layers
        self.mlp = _BatchAcc(n, s.intermediate_size, batch_agg, dev)
        self.heads = _BatchAcc(n, s.num_heads, batch_agg, dev)
        self.norms = _BatchAcc(2 * n, s.hidden_size, batch_agg, dev)
        self.bi_sum = torch.zeros(n, dtype=torch.float32, device=dev)
        self.ang_sum = torch.zeros(n + 1, n + 1, dtype=torch.float32, device=dev)
        self.samples = 0
        self.tokens = 0
        self.ang_tokens = 0
        self.active = True
        self._pick: torch.Tensor | None = None  # which tokens feed the pairwise distances
        self._bounds: list[torch.Tensor] = []
        self._handles: list[Any] = []

    # hooks -------------------------------------------------------------------------------
    def __enter__(self) -> Calibrator:
        for i in range(self.shape.num_layers):
            p = self.arch.parts(i)
            self._handles += [
                p.down.register_forward_pre_hook(self._mlp_hook(i)),
                p.o.register_forward_pre_hook(self._head_hook(i)),
                p.input_norm.register_forward_hook(self._norm_hook(2 * i)),
                p.post_norm.register_forward_hook(self._norm_hook(2 * i + 1)),
                p.layer.register_forward_hook(self._layer_hook(i), with_kwargs=True),
            ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _mlp_hook(self, i: int) -> Callable:
        def hook(mod: nn.Module, args: tuple) -> None:
            if self.active:
                self.mlp.add(i, _seq_reduce(args[0], self.seq_agg, dim=1))
        return hook

    def _head_hook(self, i: int) -> Callable:
        hd = self.shape.head_dim

        def hook(mod: nn.Module, args: tuple) -> None:
            if not self.active:
                return
            x = args[0]
            per_head = torch.linalg.vector_norm(x.unflatten(-1, (-1, hd)), dim=-1, dtype=torch.float32)
            self.heads.add(i, _seq_reduce(per_head, self.seq_agg, dim=1))
        return hook

    def _norm_hook(self, j: int) -> Callable:
        def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if self.active:
                self.norms.add(j, _seq_reduce(out, self.seq_agg, dim=1))
        return hook

    def _layer_hook(self, i: int) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if not self.active:
                return
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            dot = (x * y).sum(-1, dtype=torch.float32)
            nx = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)
            ny = torch.linalg.vector_norm(y, dim=-1, dtype=torch.float32)
            cos = dot / (nx * ny).clamp_min(1e-12)
            self.bi_sum[i] += (1.0 - cos).sum()
            if self._pick is not None:
                if i == 0:
                    self._bounds.append(self._unit(x))
                self._bounds.append(self._unit(y))
        return hook

    def _unit(self, h: torch.Tensor) -> torch.Tensor:
        sub = h.reshape(-1, h.shape[-1])[self._pick].float()
        return sub / torch.linalg.vector_norm(sub, dim=-1, keepdim=True).clamp_min(1e-12)

    # driving -----------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, ids: torch.Tensor) -> None:
        """One hooked forward of the decoder on token ids [batch, seq] (already on the device)."""
        b, s = ids.shape
        n_tok = b * s
        if self.pairwise_tokens > 0:
            stride = max(1, n_tok // self.pairwise_tokens)
            self._pick = torch.arange(0, n_tok, stride, device=ids.device)[: self.pairwise_tokens]
        self._bounds = []
        self.active = True
        self.arch.decoder(input_ids=ids, use_cache=False)
        if self._pick is not None and len(self._bounds) == self.shape.num_layers + 1:
            u = torch.stack(self._bounds, dim=1)  # [tokens, boundaries, hidden]
            cos = torch.bmm(u, u.transpose(1, 2)).clamp_(-1.0, 1.0)  # [tokens, b, b]
            self.ang_sum += torch.arccos(cos).sum(0) / math.pi
            self.ang_tokens += u.shape[0]
        self._bounds = []
        self.samples += b
        self.tokens += n_tok
        for acc in (self.mlp, self.heads, self.norms):
            acc.n = self.samples

    def result(self) -> Importance:
        if self.samples == 0:
            raise UserError("calibration: no calibration batches; check calibration_samples and the data")
        n = self.shape.num_layers
        ang = None
        if self.ang_tokens:
            ang = torch.triu(self.ang_sum / self.ang_tokens, diagonal=1)
        return Importance(
            mlp=self.mlp.result().cpu(), heads=self.heads.result().cpu(),
            hidden=self.norms.result().sum(0).cpu(),
            block_influence=(self.bi_sum / self.tokens).cpu(),
            angular=ang.cpu() if ang is not None else None,
            meta={"samples": self.samples, "tokens": self.tokens, "batch_agg": self.batch_agg,
                  "seq_agg": self.seq_agg, "pairwise_tokens": self.ang_tokens, "layers": n},
        )


# ---- LM-loss layer scores ----------------------------------------------------------------


class _Skip(nn.Module):
    """Stands in for a decoder layer: passes the hidden states through unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@torch.inference_mode()
def layer_loss_sums(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[layers + 1] summed losses: index 0 the full model, index i+1 with layer i skipped."""
    layers = Arch(model).decoder.layers
    out = [lm_loss_sum(model, ids, labels)]
    skip = _Skip()
    for i in range(len(layers)):
        keep = layers[i]
        layers[i] = skip
        try:
            out.append(lm_loss_sum(model, ids, labels))
        finally:
            layers[i] = keep
    return torch.stack(out)


# ---- the whole calibration ------------------------------------------------------------------


def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], *, batch_agg: str = "l2",
              seq_agg: str = "mean", lm_loss: bool = False, pairwise_tokens: int = 2048,
              progress: Callable[[int], None] | None = None) -> Importance:
    """Importance scores from token windows [batch, seq + 1] (inputs w[:, :-1], labels w[:, 1:])."""
    model.eval()
    dev = next(model.parameters()).device
    loss_sums: torch.Tensor | None = None
    n_loss_tokens = 0
    with Calibrator(model, batch_agg, seq_agg, pairwise_tokens) as cal:
        for step, w in enumerate(batches, start=1):
            w = torch.as_tensor(w).to(dev, non_blocking=True).long()
            ids, labels = w[:, :-1], w[:, 1:]
            cal.run(ids)
            if lm_loss:
                cal.active = False
                sums = layer_loss_sums(model, ids, labels)
                loss_sums = sums if loss_sums is None else loss_sums + sums
                n_loss_tokens += labels.numel()
            if progress is not None:
                progress(step)
        imp = cal.result()
    if loss_sums is not None:
        losses = (loss_sums / n_loss_tokens).cpu()
        imp.base_loss = float(losses[0])
        imp.lm_loss = losses[1:] - losses[0]
    return imp
