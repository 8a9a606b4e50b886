"""The denoiser replayed from CUDA graphs: one graph per input signature, captured on first use.

A small U-Net on a large GPU is launch-bound: each evaluation is a few hundred kernels of microseconds
each, and the host's time to issue them exceeds the GPU's time to run them (NOTES.md: PhysicsNeMo's
CorrDiff sampler uses ~6 % of an H100 on a 32-channel net). A CUDA graph records the kernels of one call
once and replays them with a single launch. The sampler's micro-batches have few distinct shapes (full
tiles, edge tiles, the last partial batch), each captured once.

Capture follows the PyTorch CUDA-graphs recipe (torch.cuda.graph docs, "Whole-network capture"):
warm-up calls on a side stream (cuDNN picks its algorithms, torch.compile compiles, lazy buffers are
allocated), then capture into static input and output buffers. A replay copies the inputs into the
static buffers and returns a *copy* of the static output. Returning the buffer itself would hand every
caller the same memory, overwritten by the next replay of that shape. `denoise_domain` happens to be
safe with that (it copies each output row into its per-tile pending buffer or the domain output before
its next call), but a backend's contract is a fresh tensor per call (benchmarks, tests and the Python
API keep outputs), and the copy is one output-sized device copy: one channel, against the tens of
full-resolution activation passes of the network, well under 1 % of its memory traffic.

Graphs share one memory pool. PyTorch allows that when replays never overlap and no graph's output is
read after another graph has been replayed: a later capture may place its output where an earlier
graph keeps its intermediates, which that graph's next replay overwrites. Every replay here hands its
output back as a copy before anything else runs, so the case never arises.
"""
from __future__ import annotations

from typing import Callable

import torch

Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class _Captured:
    """One captured call: static inputs, the graph, and its static output."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
        self.graph, self.inputs, self.output = graph, inputs, output


class GraphedDenoiser:
    """fn(x, sigma, cond) -> denoised, replayed from a CUDA graph per (shape, dtype) of the inputs.

    fn must be capturable: no host synchronisation, no data-dependent shapes, the same kernels on every
    call (the precipfast U-Net and its preconditioning qualify; torch.compile output does too once
    warmed up). Call it under torch.inference_mode() or torch.no_grad(), as TorchBackend does."""

    def __init__(self, fn: Fn, device: torch.device, warmup: int = 3):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 call, got {warmup}")
        if device.index is None:  # "cuda" means the current device; tensors say "cuda:N"
            device = torch.device("cuda", torch.cuda.current_device())
        self.fn, self.device, self.warmup = fn, device, warmup
        self.graphs: dict[tuple, _Captured] = {}
        self._pool = None  # shared memory pool of every graph (see the module docstring)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        inputs = (x, sigma, cond)
        for t in inputs:
            if t.device != self.device:
                raise ValueError(f"graphed denoiser on {self.device} got an input on {t.device}")
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        cap = self.graphs.get(key)
        if cap is None:
            cap = self.graphs[key] = self._capture(inputs)
        for static, t in zip(cap.inputs, inputs):
            static.copy_(t)
        cap.graph.replay()
        return cap.output.clone()

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> _Captured:
        static = tuple(t.detach().clone() for t in inputs)  # allocated outside the graph's pool
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):  # warm-up off the capture stream, as the PyTorch recipe asks
            for _ in range(self.warmup):
                self.fn(*static)
        current.wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.fn(*static)
        return _Captured(graph, static, output)
