"""Throughput suite, inference: dense vs ``to_semi_structured`` vs ``to_fast_semi_structured`` end to end, and
single large GEMMs, dense vs the 2:4 kernels."""
from __future__ import annotations

import traceback

import torch

from benchmarks.gpu_env import free
from benchmarks.throughput_train import build_timm
from nm_plugins import export_dense, sparsify, to_semi_structured
from nm_plugins.core.fast_inference import CudaGraphModule, time_ms, to_fast_semi_structured


def infer_configs(quick: bool) -> list:
    if quick:
        return [("vit_tiny_patch16_224", 32, [2]), ("resnet18", 32, [2])]
    return [("vit_large_patch16_224", 224, [256, 64]), ("vit_base_patch16_224", 224, [256, 64]),
            ("resnet50", 224, [256, 64])]

def _rel_err(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))

_BASE_MODELS = {}


def sparse_base_model(name, img):
    """A randomly initialised timm model made 2:4 (SR-STE layers), built once per name."""
    if name not in _BASE_MODELS:
        _BASE_MODELS.clear()
        torch.manual_seed(0)
        base = build_timm(name, img)
        sparsify(base, "2:4", "srste")
        _BASE_MODELS[name] = base
    return _BASE_MODELS[name]

def measure_inference(name, img, batch, dtype, device, reps, budget) -> dict:
    """Dense / semi-structured / measured export, eager and CUDA-graph, for one model, dtype, batch."""
    base = sparse_base_model(name, img)
    cl = name.startswith("resnet")
    x = torch.randn(batch, 3, img, img, device=device, dtype=dtype)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    res, outs = {}, {}
    dense = export_dense(base).to(device=device, dtype=dtype).eval()
    if cl:
        dense = dense.to(memory_format=torch.channels_last)

    def time_dense(suffix):
        with torch.no_grad():
            res[f"dense_eager_ms{suffix}"] = time_ms(lambda: dense(x), device, reps=reps)
            if device.type == "cuda":
                g = CudaGraphModule(dense, x)
                res[f"dense_graph_ms{suffix}"] = time_ms(lambda: g(x), device, reps=reps)

    with torch.no_grad():
        outs["dense"] = dense(x).clone()
    time_dense("_before")
    # PyTorch's default 2:4 path
    try:
        semi = to_semi_structured(base, dtype=dtype)
        if cl:
            semi = semi.to(memory_format=torch.channels_last)
        with torch.no_grad():
            outs["semi"] = semi(x).clone()
            res["semi_eager_ms"] = time_ms(lambda: semi(x), device, reps=reps)
            try:
                g = CudaGraphModule(semi, x)
                res["semi_graph_ms"] = time_ms(lambda: g(x), device, reps=reps)
                del g
            except Exception as exc:
                res["semi_graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
        del semi
    except Exception as exc:
        res["semi_error"] = f"{type(exc).__name__}: {exc}"[:300]
    free(device)
    # the measured export, eager and graphed (each measures its layers in its own mode)
    for mode, graph in (("graph", True), ("eager", False)):
        if budget.left() < 30:
            res[f"fast_{mode}_error"] = "skipped: time budget"
            continue
        try:
            fast, table = to_fast_semi_structured(base, x, dtype=dtype, graph=graph, reps=max(5, reps // 2),
                                                  device=str(device))
            with torch.no_grad():
                outs[f"fast_{mode}"] = fast(x).clone()
                res[f"fast_{mode}_ms"] = time_ms(lambda: fast(x), device, reps=reps)
            res[f"fast_{mode}_layers"] = [dict(vars(r)) for r in table]
            res[f"fast_{mode}_sparse_layers"] = sum(r.choice != "dense" for r in table)
            res[f"fast_{mode}_end_to_end"] = table.end_to_end  # the export's own whole-model check
            del fast
        except Exception as exc:
            res[f"fast_{mode}_error"] = f"{type(exc).__name__}: {exc}"[:300]
            res[f"fast_{mode}_traceback"] = traceback.format_exc()[-2000:]
        free(device)
    # dense timed again after the sparse variants (see inference_speedups)
    time_dense("_after")
    del dense
    free(device)
    for k, v in outs.items():
        if k != "dense":
            res[f"{k}_rel_err_vs_dense"] = _rel_err(v, outs["dense"])
    return inference_speedups(res)

def inference_speedups(res: dict) -> dict:
    """Speed-ups of one inference row from its raw timings. Dense is timed before and after the sparse
    variants; the reference is the faster of the two, so that a drift of the GPU or of the host's launch
    rate during the row (5% measured on an H100 between two timings of the same dense model; 40% once
    for a launch-bound eager ResNet-50 at batch 64 on an H200) never reads as a sparse gain."""
    for mode in ("eager", "graph"):
        if f"dense_{mode}_ms_before" in res:
            res[f"dense_{mode}_ms"] = min(res[f"dense_{mode}_ms_before"], res[f"dense_{mode}_ms_after"])
    for variant in ("semi", "fast"):
        for mode in ("eager", "graph"):
            if f"{variant}_{mode}_ms" in res:
                ref = res.get(f"dense_{mode}_ms", res["dense_eager_ms"])
                res[f"{variant}_{mode}_speedup"] = ref / res[f"{variant}_{mode}_ms"]
    if "fast_graph_ms" in res:
        res["fast_graph_vs_dense_eager"] = res["dense_eager_ms"] / res["fast_graph_ms"]
    return res


# ------------------------------------------------------------------------------------------ GEMMs
def gemm_shapes(quick):
    if quick:
        return [(64, 64, 32)]
    # (out, in, tokens): ViT-L MLP / qkv at batch 64 (64*197 = 12608 tokens), square 4k/8k on 16k tokens
    return [(4096, 1024, 12608), (1024, 4096, 12608), (3072, 1024, 12608), (4096, 4096, 16384),
            (8192, 8192, 16384), (16384, 4096, 16384), (4096, 16384, 16384)]

def measure_gemms(device, dtype, quick, reps) -> list:
    """Single Linear layers: dense vs each 2:4 kernel, eager and CUDA graph."""
    from nm_plugins.core.fast_inference import measure_kernels
    rows = []
    for out_f, in_f, tokens in gemm_shapes(quick):
        lin = torch.nn.Linear(in_f, out_f, bias=False)
        with torch.no_grad():
            from nm_plugins import nm_mask
            lin.weight.mul_(nm_mask(lin.weight, "2:4"))
        lin = lin.to(device=device, dtype=dtype)
        x = torch.randn(tokens, in_f, device=device, dtype=dtype)
        for graph in ((False, True) if device.type == "cuda" else (False,)):
            dense_ms, sparse = measure_kernels(lin, x, ("cusparselt", "semi_structured"), graph, reps, 2e-2)
            row = {"out": out_f, "in": in_f, "tokens": tokens, "dtype": str(dtype), "graph": graph,
                   "dense_ms": dense_ms, "sparse_ms": sparse,
                   "tflops_dense": 2 * out_f * in_f * tokens / dense_ms / 1e9}
            timed = [t for t in sparse.values() if isinstance(t, float)]
            row["best_speedup"] = dense_ms / min(timed) if timed else None
            rows.append(row)
        del lin, x
        free(device)
    return rows
