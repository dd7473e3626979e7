"""What a training step optimises: the student (+ projections) and the loss, as one module.

`TrainModule.forward` runs the student's base model, then the fused chunked loss on its
final hidden states (and, for distillation, the teacher's). Computing the loss *inside*
the module that DDP/FSDP wrap keeps gradient synchronisation and FSDP's parameter
gathering correct: the output weight is used within the wrapped forward.

`Teacher` runs the frozen teacher (eval mode, no grad) and returns its final hidden
states plus the outputs of the layers named in the layer map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from engine.distill.losses import LossSpec, fused_linear_loss, hidden_state_loss
from engine.distill.teacher_graph import GraphedForward


def base_model(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (`model.model` for Llama-family models)."""
    return getattr(model, model.base_model_prefix)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return base_model(model).layers


def output_weight(model: nn.Module) -> torch.Tensor:
    return model.get_output_embeddings().weight


def matmul_params(model: nn.Module) -> int:
    """Parameters that take part in a matrix product per token: every nn.Linear weight
    (attention and MLP projections and the LM head, even when tied to the embedding);
    the embedding lookup, norms and biases are not counted. Used for MFU (6N / 2N)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


# The teacher's last hidden state and the mapped layer outputs, what `Teacher.forward` returns.
TeacherOutputs = tuple[torch.Tensor, dict[int, torch.Tensor]]


@dataclass(frozen=True)
class HiddenSpec:
    """Hidden-state loss between mapped layers: [(student_layer, teacher_layer), ...]."""

    weight: float
    kind: str
    layer_map: tuple[tuple[int, int], ...]


def default_layer_map(n_student: int, n_teacher: int) -> tuple[tuple[int, int], ...]:
    """Last layer to last layer (the outputs that feed the final norm and the LM head)."""
    return ((n_student - 1, n_teacher - 1),)


class _Capture:
    """Forward hooks that keep the outputs of some decoder layers for one forward pass."""

    def __init__(self, layers: nn.ModuleList, indices: list[int]):
        self.out: dict[int, torch.Tensor] = {}
        self.handles = [layers[i].register_forward_hook(self._hook(i)) for i in sorted(set(indices))]

    def _hook(self, i: int):
        def hook(_module, _inputs, output):
            self.out[i] = output[0] if isinstance(output, tuple) else output
        return hook

    def take(self) -> dict[int, torch.Tensor]:
        out, self.out = self.out, {}
        return out

    def remove(self) -> None:
        """Unhook (the model may outlive this capture: a teacher shared by candidates one after another)."""
        for h in self.handles:
            h.remove()
        self.handles, self.out = [], {}


class TrainModule(nn.Module):
    """The trainable part of a step: student, optional hidden-state projections, the loss."""

    def __init__(self, student: nn.Module, spec: LossSpec, hidden: HiddenSpec | None = None,
                 teacher_hidden_size: int | None = None, compile_loss: bool = False):
        super().__init__()
        self.student = student
        self.spec = spec
        self.hidden = hidden if hidden and hidden.weight > 0 else None
        self.compile_loss = compile_loss
        self.projections = nn.ModuleList()
        self._capture = None
        if self.hidden is not None:
            hs = student.config.hidden_size
            ht = teacher_hidden_size or hs
            for _ in self.hidden.layer_map:
                # A learned map into the teacher's space when the widths differ (width pruning).
                self.projections.append(nn.Identity() if hs == ht else nn.Linear(hs, ht, bias=False))
            self._capture = _Capture(decoder_layers(student), [s for s, _ in self.hidden.layer_map])

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                teacher_hidden: torch.Tensor | None = None, teacher_weight: torch.Tensor | None = None,
                teacher_layers: dict[int, torch.Tensor] | None = None,
                ce_only: bool = False, teacher_top: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, parts) where parts = [kd, ce, hidden] (detached, for logging).

        `ce_only`: the plain next-token loss (validation), whatever the training loss is.
        `teacher_top`: the teacher's stored top-k logits and token ids [B, S, k] instead of its hidden
        states ([distill] teacher_logits = "cached").
        """
        out = base_model(self.student)(input_ids=input_ids, use_cache=False)
        h = out.last_hidden_state
        spec = LossSpec("ce", chunk_tokens=self.spec.chunk_tokens) if ce_only else self.spec
        use_teacher = spec.uses_teacher and teacher_hidden is not None
        top = (teacher_top[0].flatten(0, 1), teacher_top[1].flatten(0, 1)) if (
            teacher_top is not None and spec.uses_teacher) else None
        loss, kd, ce = fused_linear_loss(
            h.flatten(0, 1), output_weight(self.student), labels.flatten(), spec,
            teacher_hidden.flatten(0, 1) if use_teacher else None,
            teacher_weight if use_teacher else None, compile=self.compile_loss, t_top=top)
        hid = loss.new_zeros(())
        if self._capture is not None:
            states = self._capture.take()
            if teacher_layers is not None and not ce_only:
                terms = [hidden_state_loss(proj(states[s]), teacher_layers[t], self.hidden.kind)
                         for proj, (s, t) in zip(self.projections, self.hidden.layer_map, strict=True)]
                hid = torch.stack(terms).mean()
                loss = loss + self.hidden.weight * hid
        return loss, torch.stack([kd.detach().float(), ce.detach().float(), hid.detach().float()])


class Teacher(nn.Module):
    """The frozen teacher: final hidden states (+ mapped layer outputs), never the logits."""

    def __init__(self, model: nn.Module, capture_layers: list[int] | None = None):
        super().__init__()
        self.model = model
        model.eval()
        model.requires_grad_(False)
        self._capture = _Capture(decoder_layers(model), capture_layers) if capture_layers else None
        self.head: torch.Tensor | None = None  # the output weight, kept whole (see `freeze_head`)
        self._graphed: GraphedForward | None = None

    def release(self) -> None:
        """Take this wrapper's hooks off the model, which outlives it when the caller keeps the teacher (the
        search's audit and score wrap the same teacher once per candidate)."""
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    def use_cuda_graphs(self, log: Callable[[str], None]) -> GraphedForward:
        """Replay the forward as a CUDA graph per input shape from now on (engine/distill/teacher_graph.py):
        its outputs are then valid until the next call."""
        if self._graphed is None:
            self._graphed = GraphedForward(self._forward, log=log)
        return self._graphed

    def freeze_head(self) -> None:
        """Keep a plain reference to the output weight (taken before any FSDP sharding)."""
        self.head = output_weight(self.model).detach()

    def train(self, mode: bool = True) -> Teacher:  # the teacher always stays in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> TeacherOutputs:
        if self._graphed is not None:
            return self._graphed(input_ids)
        return self._forward(input_ids)

    def _forward(self, input_ids: torch.Tensor) -> TeacherOutputs:
        out = base_model(self.model)(input_ids=input_ids, use_cache=False)
        layers = self._capture.take() if self._capture is not None else {}
        return out.last_hidden_state, layers
