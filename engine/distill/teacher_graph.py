"""The frozen teacher's forward replayed as a CUDA graph.

On small models the GPU waits on the host: at the SmolLM2-135M shape (teacher 30 x 576, student
15 layers, micro-batch 64 x 512) a distillation step launches ~2,000 kernels and the GPU sat idle
17 of 72 ms per step (benchmarks/RESULTS.md), the Python of 45 decoder layers, their compiled
graphs' guards and the kernel launches being slower than the kernels. The teacher's forward is the
same work on every micro-batch of one shape, without gradients, so it can be captured once and
replayed with one launch.

The graph replays into static buffers: the outputs of a call are valid until the next call (the
trainers consume them within the micro-batch). Captured after `warmup_calls` plain calls of a
shape (the first compiles the layers); at most `max_shapes` shapes keep a graph (each holds a
private memory pool of the forward's activations). A capture that fails (an operation a graph
cannot hold, out of memory) turns graphs off for this teacher and says why once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Outputs = tuple[torch.Tensor, dict[int, torch.Tensor]]


class _Graph:
    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: torch.Tensor, outputs: Outputs):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs

    def __call__(self, input_ids: torch.Tensor) -> Outputs:
        self.inputs.copy_(input_ids)
        self.graph.replay()
        return self.outputs


class GraphedForward:
    """Calls `forward(input_ids)` (no grad, returns Outputs) through CUDA graphs where it can."""

    def __init__(self, forward: Callable[[torch.Tensor], Outputs], warmup_calls: int = 2, max_shapes: int = 2,
                 log: Callable[[str], None] = print):
        self.forward = forward
        self.warmup_calls = warmup_calls
        self.max_shapes = max_shapes
        self.log = log
        self.enabled = True
        self.graphs: dict[tuple[int, ...], _Graph] = {}
        self.calls: dict[tuple[int, ...], int] = {}

    def __call__(self, input_ids: torch.Tensor) -> Outputs:
        shape = tuple(input_ids.shape)
        graph = self.graphs.get(shape)
        if graph is not None:
            return graph(input_ids)
        if not (self.enabled and input_ids.is_cuda) or len(self.graphs) >= self.max_shapes:
            return self.forward(input_ids)
        self.calls[shape] = self.calls.get(shape, 0) + 1
        if self.calls[shape] <= self.warmup_calls:
            return self.forward(input_ids)
        try:
            graph = self._capture(input_ids)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            self.enabled = False
            self.log(f"teacher CUDA graph off: capturing its forward failed ({str(e).splitlines()[0][:200]})")
            torch.cuda.synchronize(input_ids.device)
            return self.forward(input_ids)
        self.graphs[shape] = graph
        return graph(input_ids)

    def _capture(self, input_ids: torch.Tensor) -> _Graph:
        inputs = input_ids.clone()
        # autocast's cast cache must stay out of a graph (its tensors would be freed under it)
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                  enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)
        side = torch.cuda.Stream(device=input_ids.device)
        side.wait_stream(torch.cuda.current_stream(input_ids.device))
        with torch.cuda.stream(side), autocast:  # lazy initialisation (cuBLAS workspaces) outside the capture
            self.forward(inputs)
        torch.cuda.current_stream(input_ids.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"), autocast:
            outputs = self.forward(inputs)
        return _Graph(graph, inputs, outputs)
