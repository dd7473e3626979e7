"""AdamW for bf16 parameters with fp32 master weights held by the optimizer (Megatron's scheme).

With fp32 parameters under bf16 autocast, every micro-batch casts all weights to bf16 for the
forward and every weight gradient back to fp32 in backward, and the residual stream runs in
fp32. Holding the model in bf16 removes those passes; the precision that the update needs
lives here instead: an fp32 copy of each parameter (`master`) and fp32 moments. One update
reads the bf16 gradient once, updates master and moments in fp32, and writes the bf16
parameter, in one fused pass per tensor on CUDA (engine/training/adamw_triton.py).

Same update as `torch.optim.AdamW`, including the two hooks the trainer uses: `grad_scale`
(gradients are divided by it: clipping) and `found_inf` (skip the step on the device, no sync).

`state_dtype` (the trainer's optimizer_states): the moments' dtype. bfloat16 halves them (8 -> 4
bytes per parameter); the update still computes in fp32 and rounds the moments (to nearest) only
when it stores them. torch.int8: 8 bits per value (engine/training/int8_moments.py; 2.03 bytes per
parameter), dequantized to fp32 for the update and quantized back. `dtype=None`: the parameters stay
fp32 and are their own masters (no copy): how the fp32 path (autocast, DDP with accumulation, the CPU)
gets bf16 moments.

With fp32 masters the bf16 parameter the forward uses is the master rounded stochastically too
(`round_copies`; before 2026-12-06 to nearest). A checkpoint's weights lie on the bf16 grid, so a master
must travel half an ulp before a parameter rounded to nearest moves at all: the first tens of steps of a
distillation from a bf16 checkpoint at lr 1e-4 saw few of their updates (SmolLM2-135M on the CPU,
benchmarks/RESULTS.md: validation 7.627 against 7.513 for fp32 weights after 60 steps; 7.524 rounded
stochastically). The masters and their exact accumulation are unchanged; the bits are those below.

`stochastic=True` (master_weights = "stochastic"): bf16 parameters and no fp32 copy (4 bytes per
parameter less). The update reads the bf16 weight as fp32 and stores it rounded stochastically (up with
probability equal to the remainder), so that updates below half a bf16 ulp still move the weight on
average instead of rounding away. The random bits are a function of (step, the tensor's index here):
a resumed run rounds as an uninterrupted one, and there is no RNG state to save.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

from engine.training import int8_moments
from engine.training.int8_moments import MOMENTS, SIGNED


def _seed32(step: int, index: int) -> int:
    """(step, index) -> a 32-bit seed: the CPU generator (mt19937) drops a seed's high 32 bits. Odd
    multipliers are invertible mod 2^32, so that one tensor never sees the same bits at two steps (up
    to 2^32 steps) and two tensors never at one step."""
    return (step * 0x9E3779B1 + index * 0x85EBCA77) % 2**32


def stochastic_round(w: torch.Tensor, step: torch.Tensor, index: int) -> torch.Tensor:
    """fp32 -> bf16, rounded up (in magnitude) with probability equal to the dropped 16 bits' fraction:
    16 random bits added to the bit pattern, then truncated (for sign-magnitude floats adding to the
    magnitude is right for negative numbers too). The bits come from a generator seeded from (step,
    index), as adamw_triton.py's kernel seeds Philox (other bits, same distribution). Non-finite values
    round to nearest (adding to a NaN's bits could carry into the sign or make it infinite)."""
    gen = torch.Generator(device=w.device).manual_seed(_seed32(int(step.item()), index))  # (a host read: CPU)
    bits = torch.randint(0, 1 << 16, w.shape, generator=gen, device=w.device, dtype=torch.int32)
    rounded = ((w.view(torch.int32) + bits) & -65536).view(torch.float32)  # -65536 == 0xFFFF0000
    return torch.where(torch.isfinite(w), rounded, w).to(torch.bfloat16)  # exact: low bits are zero


def round_into_reference(param: torch.Tensor, master: torch.Tensor, step: torch.Tensor, sr_index: int) -> None:
    """`param` (bf16) = `master` rounded stochastically with the bits of `step` (a resumed run's parameters
    as the uninterrupted run's; adamw_triton.round_into on CUDA)."""
    param.copy_(stochastic_round(master.float(), step, sr_index))


def adamw_reference(param: torch.Tensor, grad: torch.Tensor, master: torch.Tensor, exp_avg: torch.Tensor,
                    exp_avg_sq: torch.Tensor, step: torch.Tensor, lr: torch.Tensor, inv_scale: torch.Tensor,
                    skip: torch.Tensor, beta1: float, beta2: float, eps: float, weight_decay: float,
                    sr_index: int | None = None) -> None:
    """The update in torch ops (CPU, and the reference for engine/training/adamw_triton.py's kernel).

    `step` is the step count including this one; `skip` (0-d bool) leaves every tensor as it was.
    The moments may be bf16: read as fp32, stored back rounded to nearest. `master` may be `param`,
    also a bf16 one (no fp32 copy). A bf16 parameter is stored rounded to nearest, or with `sr_index`
    (the tensor's index in the optimizer) stochastically (`stochastic_round`): from its fp32 master,
    or from the update itself where it is its own master."""
    g = grad.float() * inv_scale
    m = exp_avg.float().lerp(g, 1 - beta1)
    v = exp_avg_sq.float() * beta2 + (1 - beta2) * g * g
    bias1 = 1 - beta1 ** step
    bias2_sqrt = (1 - beta2 ** step).sqrt()
    w = master.float() * (1 - lr * weight_decay) - (lr / bias1) * m / (v.sqrt() / bias2_sqrt + eps)
    rounded = stochastic_round(w, step, sr_index) if sr_index is not None else w.to(param.dtype)
    exp_avg.copy_(torch.where(skip, exp_avg, m))
    exp_avg_sq.copy_(torch.where(skip, exp_avg_sq, v))
    if master.data_ptr() != param.data_ptr():
        master.copy_(torch.where(skip, master, w))
    param.copy_(torch.where(skip, param, rounded))


_ADAMW_FLAGS = dict(amsgrad=False, maximize=False, foreach=None, capturable=False, differentiable=False,
                    fused=True, decoupled_weight_decay=True)


class MasterAdamW(torch.optim.Optimizer):
    """AdamW that keeps fp32 master weights and `state_dtype` moments for parameters it turns into `dtype`.

    Give it the fp32 parameters: it copies them as masters, then casts the parameters in place,
    so that no precision of the loaded weights is lost (`dtype=None`: no copy, no cast; `stochastic`:
    cast, no copy, stochastic rounding). `fused`: each tensor's update is one Triton kernel (CUDA); else
    torch ops (`adamw_reference`).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, dtype: torch.dtype | None = torch.bfloat16,
                 fused: bool = False, state_dtype: torch.dtype = torch.float32, stochastic: bool = False,
                 round_copies: bool = True):
        if state_dtype not in (torch.float32, torch.bfloat16, torch.int8):
            raise ValueError(f"MasterAdamW keeps its moments in float32, bfloat16 or int8 (got {state_dtype})")
        if stochastic and dtype not in (None, torch.bfloat16):
            raise ValueError(f"MasterAdamW rounds stochastically to bfloat16 only (got {dtype})")
        # (torch's flags too, so that a checkpoint of this optimizer loads into the engine's fused AdamW)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **_ADAMW_FLAGS))
        self.grad_scale: torch.Tensor | None = None
        self.found_inf: torch.Tensor | None = None
        self._sums: dict[torch.Tensor, torch.Tensor] = {}  # fp32 gradient sums (see `accumulate`)
        self._folded: set[torch.Tensor] = set()  # parameters whose sum holds this step's gradient
        self.state_dtype = state_dtype
        if state_dtype == torch.int8:
            int8_moments.require()
        # torch.int8: 8-bit moments (engine/training/int8_moments.py) where a tensor is large enough, else bf16
        self.float_states = torch.bfloat16 if state_dtype == torch.int8 else state_dtype
        # stochastic: bf16 parameters rounded stochastically, no copy; dtype None: fp32 ones, their own masters
        self.stochastic = stochastic and dtype is not None
        self.has_masters = dtype is not None and not self.stochastic
        # bf16 parameters rounded stochastically: their own masters, or (round_copies) from fp32 ones
        self.rounds_stochastically = self.stochastic or (self.has_masters and round_copies)
        if fused:
            from engine.training.adamw_triton import adamw_update, round_into
            self._update, self._round_into = adamw_update, round_into
        else:
            self._update, self._round_into = adamw_reference, round_into_reference
        self._update8 = None  # the one-kernel update of 8-bit moments, where FUSED_ENV asks for it
        if fused and state_dtype == torch.int8 and os.environ.get(int8_moments.FUSED_ENV) == "1":
            from engine.training.adamw8_triton import adamw8_update
            self._update8 = adamw8_update
        for group in self.param_groups:
            for p in group["params"]:
                if p.dtype != torch.float32:
                    raise ValueError(f"MasterAdamW takes fp32 parameters (got {p.dtype})")
                st = {"step": torch.zeros((), dtype=torch.float32, device=p.device)}
                if self.has_masters:
                    st["master"] = p.detach().clone()
                for key in MOMENTS:
                    self._put_moment(st, p, key, None)
                self.state[p] = st
                if dtype is not None:
                    p.data = p.data.to(dtype)
        # the stochastic rounding's seed: a parameter's position, the same in every run of this model
        self._index = {p: i for i, p in enumerate(self._params())}

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def accumulate(self) -> None:
        """Fold the micro-batch's bf16 gradients into fp32 sums and clear them, so that gradient
        accumulation over many micro-batches does not add in bf16. Once a micro-batch was folded,
        `gradients` and `step` use the sums: fold the last micro-batch too."""
        for p in self._params():
            if p.grad is None:
                continue
            total = self._sums.get(p)
            if total is None:
                self._sums[p] = p.grad.float()
            elif p in self._folded:
                total.add_(p.grad)
            else:
                total.copy_(p.grad)
            self._folded.add(p)
            p.grad = None

    def _grad(self, p: torch.Tensor) -> torch.Tensor | None:
        return self._sums[p] if p in self._folded else p.grad

    def gradients(self) -> list[torch.Tensor]:
        """The gradients the next step applies (the fp32 sums after `accumulate`)."""
        return [g for g in map(self._grad, self._params()) if g is not None]

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102 (torch.optim API)
        if closure is not None:
            raise ValueError("MasterAdamW does not take a closure")
        for group in self.param_groups:
            params = [p for p in group["params"] if self._grad(p) is not None]
            if not params:
                continue
            device = params[0].device
            skip = (self.found_inf > 0 if self.found_inf is not None
                    else torch.zeros((), dtype=torch.bool, device=device))
            inv_scale = (1.0 / self.grad_scale.float() if self.grad_scale is not None
                         else torch.ones((), device=device))
            lr = torch.full((), group["lr"], dtype=torch.float32, device=device)  # a fill, no host copy
            constants = (*group["betas"], group["eps"], group["weight_decay"])
            steps = [self.state[p]["step"] for p in params]
            inc = (~skip).float()
            torch._foreach_add_(steps, [inc] * len(steps))  # (the Tensor-scalar overload reads it on the host)
            for p in params:
                st = self.state[p]
                master = st["master"] if self.has_masters else p
                sr = {"sr_index": self._index[p]} if self.rounds_stochastically else {}
                if self._update8 is not None and int8_moments.quantized_state(st):
                    self._update8(p.view(-1), self._grad(p).view(-1), master.view(-1), st,
                                  int8_moments.qmaps(p.device), st["step"], lr, inv_scale, skip, *constants, **sr)
                    continue
                m, v = (self._moment(st, key).view(-1) for key in MOMENTS)
                self._update(p.view(-1), self._grad(p).view(-1), master.view(-1), m, v, st["step"], lr,
                             inv_scale, skip, *constants, **sr)
                if int8_moments.quantized_state(st):  # m and v were fp32 copies: store them back in 8 bits
                    for key, values in zip(MOMENTS, (m, v), strict=True):
                        int8_moments.quantize_into(values, st[f"{key}_codes"], st[f"{key}_scale"], SIGNED[key],
                                                   keep=skip)
        self._folded.clear()

    def _put_moment(self, st: dict[str, torch.Tensor], p: torch.Tensor, key: str,
                    values: torch.Tensor | None) -> None:
        """Store a moment (fp32 `values`, p's shape or flat; None: zeros) in this optimizer's format: 8 bits
        where optimizer_states = "int8" and p is large enough, else `float_states` in p's shape."""
        if self.state_dtype == torch.int8 and int8_moments.quantized(p.numel()):
            st[f"{key}_codes"], st[f"{key}_scale"] = (int8_moments.zeros(p.numel(), p.device) if values is None
                                                      else int8_moments.quantize(values.reshape(-1), SIGNED[key]))
        elif values is None:
            st[key] = torch.zeros_like(p, dtype=self.float_states, memory_format=torch.preserve_format)
        else:
            st[key] = values.reshape(p.shape).to(self.float_states).contiguous()

    @staticmethod
    def _moment(st: dict[str, torch.Tensor], key: str) -> torch.Tensor:
        """A moment as a tensor the update reads and writes: the state itself, or an fp32 copy of 8 bits."""
        if f"{key}_codes" in st:
            return int8_moments.dequantize(st[f"{key}_codes"], st[f"{key}_scale"], SIGNED[key])
        return st[key]

    def master_weights(self) -> dict[torch.Tensor, torch.Tensor]:
        """Parameter -> its fp32 master copy (for saving the model at full precision); without copies
        (fp32 parameters, or bf16 ones rounded stochastically) the parameter itself."""
        return {p: self.state[p]["master"] if self.has_masters else p for p in self._params()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Like Optimizer.load_state_dict, but the fp32 state stays fp32 (the stock one casts every
        floating-point state tensor to its parameter's dtype, here bf16) and the moments take
        `state_dtype`: a checkpoint written with the other optimizer_states is converted (fp32 ->
        bf16 rounds to nearest, bf16 -> fp32 is exact). A state saved by plain AdamW (a run whose
        checkpoint kept fp32 weights) has no masters: they are taken from the parameters, which
        hold the checkpoint's weights by then (accelerate loads models first). Without masters of
        its own (`dtype=None`, or `stochastic`), saved masters become the parameters. bf16 parameters are
        rounded as the saving run's were at that step: stochastically with its bits (`rounds_stochastically`),
        else to nearest."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, self.param_groups, strict=True)):
            raise ValueError("optimizer state does not match this model's parameters")
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            for key, value in saved.items():
                if key != "params":
                    group[key] = value
            for pid, p in zip(saved["params"], group["params"], strict=True):
                st = state_dict["state"].get(pid)
                if st is None:
                    continue
                st = self._loaded_state(p, st)
                if self.has_masters:
                    if "master" in st:  # the parameter is its master rounded (the checkpoint may hold no copy)
                        self._set_from_master(p, st["master"], st["step"])
                    st.setdefault("master", p.detach().float())
                elif "master" in st:
                    self._set_from_master(p, st.pop("master"), st["step"])
                self.state[p] = st

    def _loaded_state(self, p: torch.Tensor, saved: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A saved parameter state on p's device, its moments in this optimizer's format: 8-bit codes
        kept as they are where both sides quantize, else converted through fp32; the rest fp32."""
        st = {k: v.to(p.device) for k, v in saved.items()}
        keep_codes = self.state_dtype == torch.int8 and int8_moments.quantized(p.numel())
        for key in MOMENTS:
            if f"{key}_codes" in st and keep_codes:
                continue
            values = self._moment(st, key).float()
            for name in (key, f"{key}_codes", f"{key}_scale"):
                st.pop(name, None)
            self._put_moment(st, p, key, values)
        quantized = {f"{key}_{part}" for key in MOMENTS for part in ("codes", "scale")}
        return {k: v if k in quantized or k in MOMENTS else v.float() for k, v in st.items()}

    @torch.no_grad()
    def _set_from_master(self, p: torch.Tensor, master: torch.Tensor, step: torch.Tensor) -> None:
        """The parameter as the update that wrote `master` at `step` stored it: rounded stochastically
        with that step's bits where this optimizer rounds so, else cast (to nearest, or fp32 as is)."""
        if self.rounds_stochastically:
            self._round_into(p.view(-1), master.view(-1), step, self._index[p])
        else:
            p.copy_(master)
