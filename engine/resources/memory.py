"""Peak memory per process of each stage, predicted from the config: no torch, no weights.

The model counts what the engine really holds (engine/training/step.py, master_adamw.py, the fused KD
loss in engine/distill/losses.py), term by term, so that `check` can name the term that does not fit
and the knob that shrinks it:

    weights      the trained model: bf16 with fp32 masters in the optimizer where master weights
                 apply (CUDA, bf16, one process or no gradient accumulation, not FSDP), else fp32
    gradients    in the weights' dtype
    master       fp32 copy of each weight (master weights only; none with master_weights = "stochastic")
    optimizer    AdamW's two moments: fp32, or bf16 / 8 bits with optimizer_states = "bfloat16" / "int8"
    grad sums    fp32 gradient sums when master weights meet gradient accumulation
    teacher      the frozen teacher in [model].dtype (fp32 on the CPU)
    activations  what backward keeps per token and layer (below), or with gradient checkpointing
                 each layer's input plus one layer recomputed
    loss         the fused KD loss: the output weight's fp32 gradient, the hidden-state gradient and
                 one chunk's [chunk, vocab] temporaries

Activations per token and decoder layer, the tensors autograd saves in transformers' Llama modules
(counted with saved-tensor hooks; bytes, e = the activation element size: 2 for bf16, 4 for fp32): each
RMSNorm keeps its fp32 input, its normalised output and the weighted output the projections read
(4h + 2e*h); rotary embedding keeps nothing of size (it saves cos and sin), SDPA keeps the rotated q and
k, v and its output (2 q_dim + 2 kv_dim elements; the output is o_proj's input); the SwiGLU MLP keeps
gate, up, silu(gate) and their product (4 ffn elements). benchmarks/scale_gpu.py measures the prediction against torch's peak on a GPU, and
tests/test_resources.py against the saved tensors and the optimizer state on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.config import Experiment, TrainConfig
from engine.config.schema import STATE_BYTES, checkpointed_layers
from engine.config.shape import Shape, count_embedding_params, count_params
from engine.contract import GIB
from engine.shapes.budget import DTYPE_BYTES

EAGER_MAX_CHUNK = 1024  # engine/distill/losses.py: the eager chunk is capped (it keeps more temporaries)
CHUNK_TEMPS_EAGER = 36  # bytes per [chunk, vocab] element: ~8 fp32 temporaries + two bf16 logits
CHUNK_TEMPS_COMPILED = 8  # compiled chunk: two bf16 logits + one fp32 row (H100, 1.24B at chunk 4096: 12 over-predicted 1.9 GiB)


@dataclass(frozen=True)
class Knobs:
    """What decides a training stage's memory besides the shapes (a TrainConfig plus the launch)."""

    cuda: bool
    processes: int
    fsdp: bool
    micro_batch: int
    accumulation: int
    gradient_checkpointing: bool | float  # TrainConfig's: true, false or a fraction of the layers
    compile: bool
    master_weights: bool | str  # TrainConfig's: true, false or "stochastic"
    state_bytes: float  # per parameter for both Adam moments: STATE_BYTES[optimizer_states] (8, 4 or 2.03)
    chunk_tokens: int
    model_bytes: int  # [model].dtype's element size (teacher, saved models)
    mixed_bf16: bool  # [launch].mixed_precision = "bf16"
    float8: bool = False  # TrainConfig's float8: the decoder layers' matmuls in float8 (torchao)

    @property
    def master(self) -> bool:
        """engine/training/setup.py master_weights_apply, from the config."""
        return (self.master_weights is not False and self.cuda and self.mixed_bf16
                and not (self.fsdp and self.processes > 1)
                and (self.processes == 1 or self.accumulation == 1))

    @property
    def stochastic(self) -> bool:
        """bf16 weights without the fp32 master copy (master_weights = "stochastic" where masters apply)."""
        return self.master and self.master_weights == "stochastic"


@dataclass
class Need:
    """One stage's predicted peak: bytes per process, term by term. `parts` are held for the whole step;
    `phases` (forward, backward) are held one after the other, so the peak takes the larger."""

    stage: str
    device: str  # "gpu" | "cpu"
    processes: int
    parts: dict[str, int] = field(default_factory=dict)
    micro_batch: int | None = None
    knobs: Knobs | None = None
    phases: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def peak_phase(self) -> str | None:
        return max(self.phases, key=lambda p: sum(self.phases[p].values())) if self.phases else None

    @property
    def total(self) -> int:
        phase = self.peak_phase
        return sum(self.parts.values()) + (sum(self.phases[phase].values()) if phase else 0)

    def term(self, name: str) -> int:
        """A term's bytes wherever it sits (0 when absent)."""
        return self.parts.get(name, 0) + max((p.get(name, 0) for p in self.phases.values()), default=0)

    def gib(self) -> float:
        return self.total / GIB

    def describe(self) -> str:
        def terms(d: dict[str, int]) -> str:
            return ", ".join(f"{k} {v / GIB:.1f}" for k, v in d.items() if v >= 0.05 * GIB)

        per = "per GPU" if self.device == "gpu" else "of host memory"
        phase = self.peak_phase
        at = terms(self.phases[phase]) if phase else ""
        # (terms under 0.05 GiB are left out: a tiny model may have none to name)
        said = "; ".join(x for x in (terms(self.parts), at and f"peak in {phase}: {at}") if x)
        return f"~{self.gib():.1f} GiB {per}" + (f" ({said})" if said else "")


# ---- the terms ---------------------------------------------------------------------------


def _dims(s: Shape) -> tuple[int, int, int, int]:
    return s.hidden_size, s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.intermediate_size


def layer_activation_bytes(s: Shape, e: int, fp32_residual: bool = False, compiled: bool = False,
                           float8: bool = False) -> int:
    """Bytes backward keeps per token for one decoder layer (module docstring); `fp32_residual`: fp32
    weights under bf16 autocast, where the norms' outputs are fp32 and each projection casts its input
    to a bf16 copy of its own (q, k, v: three; gate, up: two). `compiled` (compiled layers on CUDA):
    inductor's partitioner recomputes the cheap elementwise work in backward, so each RMSNorm keeps its
    input and the output the projections read (no fp32 copy) and the MLP keeps gate, up and their
    product (silu is recomputed): 0.70-0.72 of the eager bytes at the Llama shapes, as measured on an
    H100 (benchmarks/RESULTS.md "8B on one GPU": 8B students with 0.5 and 0.6 of the layers checkpointed,
    1.24B without). `float8` (compiled, torchao's float8 matmuls): the partitioner keeps one tensor per RMSNorm
    and two of the MLP's three, recomputing the rest with the casts in backward (counted on the CPU,
    tests/test_resources.py; it put the float8 peaks' drop at 8B, 1.24B and SmolLM2's shape within 1% on an H100)."""
    h, q, kv, f = _dims(s)
    if compiled and not fp32_residual and float8:
        return 2 * e * h + e * (2 * q + 2 * kv + 2 * f)
    if compiled and not fp32_residual:
        return 2 * (2 * e * h) + e * (2 * q + 2 * kv + 3 * f)
    norms = 2 * (4 * h + 2 * e * h) if not fp32_residual else 2 * 12 * h + 2 * (3 + 2) * h
    return norms + e * (2 * q + 2 * kv + 4 * f)


def layer_forward_bytes(s: Shape, e: int) -> int:
    """Bytes per token one layer's forward holds at once without autograd (the largest: the MLP)."""
    h, q, kv, f = _dims(s)
    return e * (2 * h + max(q + 2 * kv, 3 * f))


def activation_bytes(s: Shape, tokens: int, e: int, checkpointing: bool | float, fp32_residual: bool,
                     compiled: bool = False, float8: bool = False) -> int:
    """What the forward holds for backward. A checkpointed layer keeps its input only and is recomputed,
    one at a time, in backward (engine/training/recompute.py: the first ones are checkpointed,
    and backward frees the later, uncheckpointed ones before it recomputes any)."""
    per_layer = layer_activation_bytes(s, e, fp32_residual, compiled, float8)
    final_norm = 4 * s.hidden_size + 2 * e * s.hidden_size
    c = checkpointed_layers(checkpointing, s.num_layers)
    inputs = c * (4 if fp32_residual else e) * s.hidden_size
    return tokens * (inputs + max(s.num_layers - c, 1 if c else 0) * per_layer + final_norm)


def loss_bytes(s: Shape, tokens: int, k: Knobs, act: int, vocab: int) -> int:
    """The fused loss: fp32 output-weight gradient, the hidden-state gradient, one chunk's temporaries."""
    compiled = k.compile and k.cuda
    chunk = min(tokens, k.chunk_tokens if compiled else min(k.chunk_tokens, EAGER_MAX_CHUNK))
    temps = chunk * vocab * (CHUNK_TEMPS_COMPILED if compiled else CHUNK_TEMPS_EAGER)
    if not k.cuda:
        temps = chunk * vocab * CHUNK_TEMPS_EAGER
    return 4 * vocab * s.hidden_size + tokens * s.hidden_size * act + temps


def training_need(stage: str, student: Shape, teacher: Shape | None, k: Knobs, seq_length: int,
                  top_k: int | None = None) -> Need:
    """A finetune (teacher None) or distill stage's peak per process: weights, masters, moments and the
    teacher are held throughout; on top, the larger of the forward (activations, the fused loss's chunk and
    head gradient) and the backward (the gradients, the head gradient, and the layer being back-propagated:
    recomputed with checkpointing, else all activations at its start). Measured on an H100 within 5% at
    SmolLM2-135M, 1.24B and 8B -> 4.5B shapes (benchmarks/RESULTS.md "8B on one GPU"). `top_k`: no teacher,
    its stored top-k logits instead (teacher_logits = "cached")."""
    n = count_params(student)
    shard = k.processes if (k.fsdp and k.processes > 1) else 1
    parts: dict[str, int] = {}
    if k.master:
        parts["weights"] = 2 * n
        grads = 2 * n
        if not k.stochastic:
            parts["master"] = 4 * n
        parts["optimizer"] = int(k.state_bytes * n)
        if k.accumulation > 1:
            parts["grad sums"] = 4 * n
    else:
        parts["weights"] = 4 * n // shard
        grads = 4 * n // shard
        parts["optimizer"] = int(k.state_bytes * n) // shard
        if k.cuda and k.mixed_bf16 and shard == 1:  # autocast's bf16 weight copies live through backward
            parts["bf16 casts"] = 2 * n
        elif shard > 1:  # FSDP2: a layer's bf16 weights and fp32 gradients gathered at a time, two in flight
            parts["gathered layers"] = 2 * 6 * (n - count_embedding_params(student)) // student.num_layers
    tokens = k.micro_batch * seq_length
    act = 2 if (k.cuda and k.mixed_bf16) else 4
    fp32_residual = k.cuda and not k.master and act == 2
    vocab = student.vocab_size or 0
    forward: dict[str, int] = {}
    if teacher is not None:
        parts["teacher"] = count_params(teacher) * (k.model_bytes if k.cuda else 4) // shard
        forward["teacher outputs"] = tokens * teacher.hidden_size * act
    if top_k is not None:  # the teacher's stored top-k of the micro-batch instead of the teacher (int64 ids)
        forward["teacher top-k"] = tokens * top_k * (act + 8)
    compiled = k.compile and k.cuda
    activations = activation_bytes(student, tokens, act, k.gradient_checkpointing, fp32_residual, compiled, k.float8)
    # With checkpointing, backward frees the last, kept layers' activations before it recomputes the
    # first ones, so its peak is at the end: the gradients beside one recomputed layer (what the kept
    # layers add shows in the forward). Without, backward starts from all that the forward kept.
    # Measured on an H100 at 8B -> 4.5B: 0.9 of the layers peaked 0.6 GiB above all of them, where the
    # sum of the kept layers and the gradients had predicted +7.5 GiB.
    recomputes = checkpointed_layers(k.gradient_checkpointing, student.num_layers) > 0
    forward["activations"] = activations
    forward["loss"] = loss_bytes(student, tokens, k, act, vocab)
    layer = tokens * layer_activation_bytes(student, act, fp32_residual, compiled, k.float8)
    backward = {"gradients": grads, "head gradient": 4 * vocab * student.hidden_size,
                "layer" if recomputes else "activations": layer if recomputes else activations}
    return Need(stage, "gpu" if k.cuda else "cpu", k.processes, parts, k.micro_batch, k,
                {"forward": forward, "backward": backward})


def forward_need(stage: str, models: list[Shape], tokens: int, cuda: bool, model_bytes: int,
                 resident: int = 0) -> Need:
    """A forward-only stage (prune's calibration and scoring, eval): the largest model plus one layer's
    forward and the logits of a batch. `resident`: the pruned student's bytes, built after the calibration
    has freed its batches (measured on an H100 at 8B: the peak was the teacher and the student alone,
    23.40 GiB, where the sum of the two phases had predicted 28.5)."""
    e = model_bytes if cuda else 4
    big = max(models, key=count_params)
    vocab = big.vocab_size or 0
    forward = {"activations": tokens * (layer_forward_bytes(big, e) + 2 * big.hidden_size * e),
               "logits": min(tokens, EAGER_MAX_CHUNK) * vocab * 4 * 3}
    phases = {"forward": forward, "pruned": {"student": resident}} if resident else {"forward": forward}
    return Need(stage, "gpu" if cuda else "cpu", 1, {"weights": count_params(big) * e}, phases=phases)


# ---- the knobs a stage runs with ---------------------------------------------------------


def train_knobs(exp: Experiment, cfg: TrainConfig, processes: int, cuda: bool, micro: int | None = None) -> Knobs:
    """The Knobs of a training stage on `processes` GPUs (or the CPU). `micro`: the micro-batch to
    predict at (default: the configured one; "auto" predicts at 1, the smallest it can pick)."""
    from engine.config.micro_batch import AUTO, fixed_micro_batch

    per = max(1, cfg.global_batch_size // max(1, processes))
    if micro is None:
        micro = 1 if (cfg.micro_batch_size == AUTO and cuda) else fixed_micro_batch(cfg, processes)
    states = getattr(cfg, "optimizer_states", "float32")
    return Knobs(cuda=cuda, processes=processes, fsdp=exp.launch.strategy == "fsdp", micro_batch=micro,
                 accumulation=max(1, per // micro), gradient_checkpointing=cfg.gradient_checkpointing,
                 compile=cfg.compile, master_weights=cfg.master_weights,
                 state_bytes=STATE_BYTES[states],
                 chunk_tokens=getattr(cfg, "chunk_tokens", 2048),
                 model_bytes=DTYPE_BYTES[exp.model.dtype], mixed_bf16=exp.launch.mixed_precision == "bf16",
                 float8=cfg.float8)
