"""A measured 2:4 inference export: each layer sparse only where the sparse kernel wins on this GPU.

:func:`to_fast_semi_structured` exports an N:M model for CUDA inference. For every 2:4-compatible
sparse Linear (and 1x1 stride-1 Conv2d, run as a GEMM over channels_last pixels) it times, at the input
shape the model really feeds it, the dense layer against the available 2:4 kernels (PyTorch's
semi-structured tensor, and cuSPARSELt called directly with the transposed output fused), checks that
each sparse candidate computes the same function, and keeps the fastest, dense where sparse loses. The
result can run under a CUDA graph (:class:`CudaGraphModule`) to remove the per-call launch overhead.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import SparseConv2d, SparseLinear, sparse_layers
from .sparsify import _set_module, export_dense


def time_ms(fn, device, warmup: int = 5, reps: int = 20, graph: bool = False) -> float:
    """Median milliseconds of ``fn()``: CUDA events on a CUDA device (each call replayed from a captured
    CUDA graph when ``graph``), the wall clock on the CPU (``graph`` ignored)."""
    if torch.device(device).type != "cuda":
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    run = fn
    if graph:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run = g.replay
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


class CusparseltLinear(nn.Module):
    """Inference Linear with a 2:4 weight compressed for cuSPARSELt; y = x W^T + b computed as
    (W x^T)^T with the transpose fused into the sparse GEMM and the bias fused too."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed", torch._cslt_compress(weight.detach().contiguous()))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = torch._cslt_sparse_mm(self.packed, x2.t(), bias=self.bias, transpose_result=True)
        return y.view(*lead, self.out_features)


class SemiStructuredLinear(nn.Module):
    """Inference Linear whose weight is PyTorch's SparseSemiStructuredTensor (its default 2:4 path)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.weight = nn.Parameter(to_sparse_semi_structured(weight.detach().contiguous()), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Conv1x1AsLinear(nn.Module):
    """A 1x1, stride-1 convolution run as a Linear over the pixels of a channels_last input."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x.permute(0, 2, 3, 1))  # [N, H, W, C]: contiguous when x is channels_last
        return y.permute(0, 3, 1, 2)


SPARSE_KERNELS = {"cusparselt": CusparseltLinear, "semi_structured": SemiStructuredLinear}


def _is_gemm_conv(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1) and conv.groups == 1)


def _as_linear_weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().reshape(module.weight.shape[0], -1)


def _wrap(module: nn.Module, kernel: str) -> nn.Module:
    linear = SPARSE_KERNELS[kernel](_as_linear_weight(module), module.bias)
    return Conv1x1AsLinear(linear) if isinstance(module, nn.Conv2d) else linear


@dataclass
class LayerChoice:
    """What the export measured for one layer and what it kept."""

    name: str
    kind: str
    weight_shape: tuple
    input_shape: tuple
    dense_ms: float
    sparse_ms: dict  # kernel -> ms, or the error that ruled it out
    choice: str
    note: str = ""  # e.g. why a layer that won alone went back to dense

    @property
    def best_ratio(self) -> float | None:
        """dense time / best sparse time (> 1: sparse is faster)."""
        times = [t for t in self.sparse_ms.values() if isinstance(t, float)]
        return self.dense_ms / min(times) if times else None


def choose_kernel(dense_ms: float, sparse_ms: dict, min_speedup: float) -> str:
    """The fastest sparse kernel when it beats dense by ``min_speedup``, else ``"dense"``."""
    timed = {k: t for k, t in sparse_ms.items() if isinstance(t, float)}
    if not timed:
        return "dense"
    best = min(timed, key=timed.get)
    return best if dense_ms / timed[best] >= min_speedup else "dense"


class LayerTable(list):
    """The export's :class:`LayerChoice` rows, plus ``end_to_end``: the whole-model check (dense ms, ms
    with the chosen sparse layers, speed-up, what was kept and why)."""

    end_to_end: dict | None = None


def keep_sparse_model(dense_ms: float, sparse_ms: float, min_speedup: float) -> bool:
    """True when the model with its chosen sparse layers beats the dense model by ``min_speedup`` end to end."""
    return dense_ms / sparse_ms >= min_speedup


def _candidates(model: nn.Module, convs: bool) -> list:
    names = []
    for name, layer in sparse_layers(model):
        if not layer.nm_method.applies_mask or not layer.pattern.tensor_core_compatible:
            continue
        if isinstance(layer, SparseLinear) or (convs and isinstance(layer, SparseConv2d) and _is_gemm_conv(layer)):
            names.append(name)
    return names


def measure_kernels(module: nn.Module, x: torch.Tensor, kernels, graph: bool, reps: int, rtol: float):
    """(dense ms, {kernel: ms or why it was ruled out}) of one layer at input ``x``: each sparse kernel timed only
    when its output matches the dense one within ``rtol`` (relative norm error)."""
    graph = graph and x.device.type == "cuda"
    with torch.no_grad():
        ref = module(x)
        dense_ms = time_ms(lambda: module(x), x.device, reps=reps, graph=graph)
        sparse = {}
        for kernel in kernels:
            try:
                cand = _wrap(module, kernel)
                out = cand(x)
                err = float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
                if tuple(out.shape) != tuple(ref.shape) or not err <= rtol:
                    sparse[kernel] = f"wrong result (shape {tuple(out.shape)}, relative error {err:.2e})"
                    continue
                sparse[kernel] = time_ms(lambda: cand(x), x.device, reps=reps, graph=graph)
            except Exception as exc:  # a kernel that refuses this shape/dtype/GPU is ruled out, with the reason
                sparse[kernel] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return dense_ms, sparse


def to_fast_semi_structured(model: nn.Module, example_input: torch.Tensor, dtype: torch.dtype = torch.float16,
                            min_speedup: float = 1.05, graph: bool = True, convs: bool = True,
                            kernels=("cusparselt", "semi_structured"), reps: int = 20, rtol: float = 2e-2,
                            device: str = "cuda"):
    """Export ``model`` for CUDA inference in ``dtype`` with each 2:4 layer sparse only where it wins.

    Every candidate layer is timed at the input shape ``example_input`` gives it (under a CUDA graph when
    ``graph``), dense against each sparse kernel; a kernel must match the dense output (relative error
    <= ``rtol``) and beat dense by ``min_speedup`` to be kept. Layers that win alone can still lose
    together (launch overheads, memory traffic, a CUDA graph's schedule), so the whole model is timed
    too, dense against the chosen sparse layers, in the same mode: unless it also wins by ``min_speedup``
    every layer goes back to dense — the export never makes the model slower than it measured.
    Returns ``(exported model, LayerTable)`` (a list of :class:`LayerChoice` with ``end_to_end``); with
    ``graph`` the model is wrapped in a :class:`CudaGraphModule` for ``example_input``'s shape.
    ``device="cpu"`` runs the same measurement on the CPU, where no 2:4 kernel exists: every layer stays
    dense and the table says why (a dry run of the procedure). Raises RuntimeError for CUDA without a GPU.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("to_fast_semi_structured needs a CUDA GPU (2:4 sparse tensor cores); none is available")
    names = _candidates(model, convs)
    out = export_dense(model).to(device=device, dtype=dtype).eval()
    x = example_input.to(device=device, dtype=dtype)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        out = out.to(memory_format=torch.channels_last)
    by_sig, sig_of, hooks = {}, {}, []

    def record(mod, args, name):
        x_in = args[0]
        sig = (type(mod), tuple(mod.weight.shape), mod.bias is not None, tuple(x_in.shape), x_in.stride())
        sig_of[name] = sig
        if sig not in by_sig:  # one stored input per distinct layer shape
            by_sig[sig] = x_in.detach().clone()

    for name in names:
        hooks.append(out.get_submodule(name).register_forward_pre_hook(
            lambda mod, args, name=name: record(mod, args, name)))
    with torch.no_grad():
        out(x)
    for h in hooks:
        h.remove()
    graph_e2e = graph and device.type == "cuda"
    with torch.no_grad():
        dense_e2e_ms = time_ms(lambda: out(x), device, reps=reps, graph=graph_e2e)
    cache, table, replaced = {}, LayerTable(), []
    for name in names:
        if name not in sig_of:  # a layer the forward never called
            continue
        module = out.get_submodule(name)
        sig = sig_of[name]
        if sig not in cache:
            cache[sig] = measure_kernels(module, by_sig[sig], kernels, graph, reps, rtol)
        dense_ms, sparse_ms = cache[sig]
        choice = choose_kernel(dense_ms, sparse_ms, min_speedup)
        table.append(LayerChoice(name, type(module).__name__, tuple(module.weight.shape), sig[3],
                                 dense_ms, dict(sparse_ms), choice))
        if choice != "dense":
            replaced.append((name, module, table[-1]))
            _set_module(out, name, _wrap(module, choice))
    del by_sig
    table.end_to_end = {"dense_ms": dense_e2e_ms, "sparse_ms": None, "speedup": None, "kept": "dense",
                        "reason": "no layer was faster sparse"}
    if replaced:
        with torch.no_grad():
            sparse_e2e_ms = time_ms(lambda: out(x), device, reps=reps, graph=graph_e2e)
        keep = keep_sparse_model(dense_e2e_ms, sparse_e2e_ms, min_speedup)
        table.end_to_end.update(sparse_ms=sparse_e2e_ms, speedup=dense_e2e_ms / sparse_e2e_ms,
                                kept="sparse" if keep else "dense",
                                reason=f"{len(replaced)} sparse layer(s) {'win' if keep else 'lose'} together")
        if not keep:
            for name, module, row in replaced:
                _set_module(out, name, module)
                row.choice, row.note = "dense", "won alone; the whole model was not faster"
    if graph and device.type == "cuda":
        out = CudaGraphModule(out, x)
    return out, table


class CudaGraphModule(nn.Module):
    """Runs ``module`` (inference) by replaying a CUDA graph captured for one input shape/dtype; other
    inputs run eagerly. The output tensor is reused by the next call: clone it to keep it."""

    def __init__(self, module: nn.Module, example_input: torch.Tensor, warmup: int = 3):
        super().__init__()
        if not torch.cuda.is_available():
            raise RuntimeError("CudaGraphModule needs a CUDA GPU; none is available")
        self.module = module
        self.static_input = example_input.detach().clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(warmup):
                module(self.static_input)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_output = module(self.static_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.static_input
        if x.shape != s.shape or x.dtype != s.dtype or x.device != s.device or x.stride() != s.stride():
            with torch.no_grad():
                return self.module(x)
        s.copy_(x)
        self.graph.replay()
        return self.static_output


def format_layer_table(table: list) -> str:
    """Markdown table of :class:`LayerChoice` rows: shape, dense ms, each sparse ms, ratio, choice."""
    kernels = sorted({k for row in table for k in row.sparse_ms})
    head = ["layer", "weight", "input", "dense ms"] + [f"{k} ms" for k in kernels] + ["dense/best sparse", "kept"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [r.name, "x".join(map(str, r.weight_shape)), "x".join(map(str, r.input_shape)), f"{r.dense_ms:.4f}"]
        for k in kernels:
            t = r.sparse_ms.get(k)
            cells.append(f"{t:.4f}" if isinstance(t, float) else ("n/a" if t is None else "failed"))
        ratio = r.best_ratio
        cells += ["-" if ratio is None else f"{ratio:.2f}x", r.choice + (f" ({r.note})" if r.note else "")]
        lines.append("| " + " | ".join(cells) + " |")
    e2e = getattr(table, "end_to_end", None)
    if e2e:
        sparse = "-" if e2e["sparse_ms"] is None else f"{e2e['sparse_ms']:.4f} ms ({e2e['speedup']:.2f}x)"
        lines.append(f"\nWhole model: dense {e2e['dense_ms']:.4f} ms, with the chosen sparse layers {sparse}; "
                     f"kept {e2e['kept']} ({e2e['reason']}).")
    return "\n".join(lines)
