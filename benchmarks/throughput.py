"""GPU throughput suite: SR-STE training cost and 2:4 inference gain, measured side by side.

``python -m benchmarks.throughput`` (``make throughput``). On a CUDA GPU it measures
  * training steps, dense vs SR-STE vs STE through the layers of ``sparsify`` (the one path: a Triton
    kernel per layer on CUDA), ResNet-50 (bf16 autocast, channels_last, batch 128) and ViT-B/16 (batch
    128): median over timed steps, CUDA events, the variants interleaved in rounds;
  * the core's ``nm_mask`` on CUDA tensors (the Triton kernel) against an exact argsort reference
    (correctness on random data and ties, every pattern and dtype, channels_last weights; time);
  * inference, dense vs ``to_semi_structured`` vs ``to_fast_semi_structured``, fp16/bf16, batch 64/256,
    eager and under CUDA graphs, for ViT-B/16, ViT-L/16 and ResNet-50, with the per-layer GEMM table;
  * single large GEMMs, dense vs the 2:4 kernels;
and writes ``<out>/<gpu>.json`` (flat ``metrics`` for ``ci.check``) and ``<out>/<gpu>.md``, then checks
the figures against ``ci/thresholds/throughput_<gpu>.yaml`` (exit 1 when one falls short). Without CUDA
it says so, runs the small CPU part (nm_mask vs the argsort reference, step ratios) and exits 0.
``--quick`` runs every section at toy sizes (on the CPU it exercises the GPU code paths as a dry run).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.reference import argsort_nm_mask
from nm_plugins import export_dense, nm_mask, sparsify, to_semi_structured
from nm_plugins.core.fast_inference import CudaGraphModule, time_ms, to_fast_semi_structured
from nm_plugins.runtime.results import write_results_json, write_text

REPO = Path(__file__).resolve().parents[1]
# (name, method of sparsify): every variant trains through the same layers, whatever the device
TRAIN_VARIANTS = (("dense", "dense"), ("srste", "srste"), ("ste", "ste"))


class Budget:
    """Wall-clock budget for the whole run; sections skip what no longer fits."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.time(), seconds

    def left(self) -> float:
        return self.seconds - (time.time() - self.start)


def gpu_slug(name: str) -> str:
    """'NVIDIA H200' -> 'h200', 'NVIDIA A100-SXM4-80GB' -> 'a100', 'cpu' -> 'cpu'."""
    m = re.search(r"\b([ABHL]\d{2,3})\b", name.replace("-", " "))
    return m.group(1).lower() if m else re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def environment(device: torch.device) -> dict:
    """GPU name and the torch / CUDA / cuDNN / cuSPARSELt / Triton versions every figure goes with."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    try:
        env["cusparselt"] = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
    except Exception as exc:
        env["cusparselt"] = f"unknown ({type(exc).__name__})"
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1))
    else:
        env["gpu"] = "cpu"
    return env


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- training
def train_configs(quick: bool) -> list:
    if quick:
        return [("resnet18", dict(batch=4, img=32, channels_last=True)),
                ("vit_tiny_patch16_224", dict(batch=4, img=32, channels_last=False))]
    return [("resnet50", dict(batch=128, img=224, channels_last=True)),
            ("vit_base_patch16_224", dict(batch=128, img=224, channels_last=False))]


def build_timm(name: str, img: int, num_classes: int = 1000):
    import timm
    kwargs = {"img_size": img} if name.startswith("vit") else {}
    return timm.create_model(name, num_classes=num_classes, **kwargs)


def per_step_ms(step, device, n: int) -> float:
    """Mean ms per call of ``n`` back-to-back calls (CUDA events around all of them; wall clock on CPU)."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - t0) * 1e3 / n
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def measure_training(name, cfg, device, budget, rounds=3, warmup=3, steps=8) -> dict:
    """Median step ms of each variant, interleaved in rounds so drifts hit all variants alike."""
    torch.manual_seed(0)
    amp = device.type == "cuda"
    x = torch.randn(cfg["batch"], 3, cfg["img"], cfg["img"], device=device)
    if cfg["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (cfg["batch"],), device=device)
    runs = {}
    for variant, method in TRAIN_VARIANTS:
        model = build_timm(name, cfg["img"])
        sparsify(model, "2:4", method)  # before .to(device): the layers must follow the move
        model = model.to(device)
        if cfg["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        runs[variant] = (model, opt)

    def step(model, opt):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    times = {v: [] for v in runs}
    for r in range(rounds):
        if r and budget.left() < 60:
            break
        for variant, (model, opt) in runs.items():
            for _ in range(warmup if r == 0 else 1):
                step(model, opt)
            for _ in range(3):  # back-to-back steps between two events: the pipeline stays full
                times[variant].append(per_step_ms(lambda: step(model, opt), device, steps))
    result = {f"{v}_ms": statistics.median(t) for v, t in times.items()}
    result["rounds"] = {v: t for v, t in times.items()}
    for v in runs:
        if v != "dense":
            result[f"{v}_over_dense"] = result[f"{v}_ms"] / result["dense_ms"]
    del runs
    free(device)
    return result


# ----------------------------------------------------------------------------------- mask kernel
def mask_kernel_cases(quick: bool) -> list:
    """(shape, channels_last) of the weights the kernel check covers: conv and linear, odd sizes, input
    channels not divisible by M (a zero-padded last group)."""
    if quick:
        return [((16, 8, 3, 3), False), ((16, 8, 3, 3), True), ((24, 16), False), ((8, 6, 3, 3), False)]
    return [((256, 128, 3, 3), False), ((256, 128, 3, 3), True), ((1000, 2048), False), ((2048, 512, 1, 1), True),
            ((3072, 768), False), ((37, 24, 5, 5), False), ((64, 6, 3, 3), True)]


def check_mask_kernel(device, quick) -> dict:
    """``nm_mask`` on CUDA tensors (the core's Triton kernel) vs the argsort reference on the CPU, on random
    data and on ties, for every pattern and dtype; then the time of both on ResNet-50's conv weights.
    ``quick`` on the CPU: the same checks and timings at toy size (a dry run; the CPU kernel is checked)."""
    out = {"checks": [], "all_equal": None}
    if device.type != "cuda" and not quick:
        out["skipped"] = "no CUDA: the core's CUDA mask path is checked on the CPU by the core's tests (Triton interpreter)"
        return out
    gen = torch.Generator(device="cpu").manual_seed(1)
    ok = True
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for pattern in ("2:4", "1:4", "2:8", "4:8"):
            n, m = map(int, pattern.split(":"))
            for shape, channels_last in mask_kernel_cases(quick):  # partial last groups included
                for ties in (False, True):
                    w = torch.randint(-3, 4, shape, generator=gen) if ties else torch.randn(shape, generator=gen)
                    w = w.to(dtype)
                    if channels_last and w.dim() == 4:
                        w = w.contiguous(memory_format=torch.channels_last)
                    ref = argsort_nm_mask(w.float(), n, m)
                    got = nm_mask(w.to(device), pattern)
                    equal = got.device.type == device.type and torch.equal(got.cpu(), ref)
                    ok &= equal
                    out["checks"].append({"dtype": str(dtype), "pattern": pattern, "shape": list(shape),
                                          "channels_last": channels_last, "ties": ties, "equal": equal})
    out["all_equal"] = ok
    try:  # which implementation the core binds for a tensor on this device (informational)
        from nm_plugins.core.mask_triton import triton_usable
        out["triton_bound"] = bool(triton_usable(torch.zeros(4, 4, device=device)))
    except ImportError as exc:
        out["triton_bound"] = f"unknown ({exc})"
    import timm
    model = timm.create_model("resnet18" if quick else "resnet50")
    weights = [p.detach().to(device) for p in model.parameters() if p.dim() == 4 and p.shape[1] % 4 == 0]
    out["timed_model"] = "resnet18 (quick)" if quick else "resnet50"
    out["resnet50_conv_weights"] = sum(w.numel() for w in weights)
    out["resnet50_nm_mask_ms"] = time_ms(lambda: [nm_mask(w, "2:4") for w in weights], device, warmup=1 if quick else 5, reps=2 if quick else 20)
    out["resnet50_argsort_ms"] = time_ms(lambda: [argsort_nm_mask(w) for w in weights], device, warmup=1 if quick else 2, reps=2 if quick else 5)
    out["resnet50_argsort_over_nm_mask"] = out["resnet50_argsort_ms"] / out["resnet50_nm_mask_ms"]
    return out


# ------------------------------------------------------------------------------------- inference
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
    from nm_plugins.core.fast_inference import _measure
    rows = []
    for out_f, in_f, tokens in gemm_shapes(quick):
        lin = torch.nn.Linear(in_f, out_f, bias=False)
        with torch.no_grad():
            from nm_plugins import nm_mask
            lin.weight.mul_(nm_mask(lin.weight, "2:4"))
        lin = lin.to(device=device, dtype=dtype)
        x = torch.randn(tokens, in_f, device=device, dtype=dtype)
        for graph in ((False, True) if device.type == "cuda" else (False,)):
            dense_ms, sparse = _measure(lin, x, ("cusparselt", "semi_structured"), graph, reps, 2e-2)
            row = {"out": out_f, "in": in_f, "tokens": tokens, "dtype": str(dtype), "graph": graph,
                   "dense_ms": dense_ms, "sparse_ms": sparse,
                   "tflops_dense": 2 * out_f * in_f * tokens / dense_ms / 1e9}
            timed = [t for t in sparse.values() if isinstance(t, float)]
            row["best_speedup"] = dense_ms / min(timed) if timed else None
            rows.append(row)
        del lin, x
        free(device)
    return rows


# ---------------------------------------------------------------------------------------- CPU part
def cpu_part(quick) -> dict:
    """Without CUDA: nm_mask vs the argsort reference on ResNet-50's conv weights; short step ratios."""
    import timm
    model = timm.create_model("resnet18" if quick else "resnet50")
    weights = [p.detach() for p in model.parameters() if p.dim() == 4 and p.shape[1] % 4 == 0]
    cpu = torch.device("cpu")
    res = {"nm_mask_ms": time_ms(lambda: [nm_mask(w, "2:4") for w in weights], cpu, warmup=1, reps=3),
           "argsort_ms": time_ms(lambda: [argsort_nm_mask(w) for w in weights], cpu, warmup=1, reps=3)}
    res["argsort_over_nm_mask"] = res["argsort_ms"] / res["nm_mask_ms"]
    cfg = dict(batch=8, img=32, channels_last=False)
    res["train_resnet18"] = measure_training("resnet18", cfg, cpu, Budget(300), rounds=1, warmup=1, steps=1)
    return res


# ------------------------------------------------------------------------------------------ report
def flatten_metrics(results: dict) -> dict:
    """The flat ``metrics`` dict ci.check reads."""
    m = {}
    for name, r in results.get("train", {}).items():
        for k, v in r.items():
            if isinstance(v, (int, float)):
                m[f"train/{name}/{k}"] = v
    fast, fast_vit = [], []
    for key, r in results.get("inference", {}).items():
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                m[f"infer/{key}/{k}"] = v
        for k in ("fast_graph_speedup", "fast_eager_speedup"):
            if k in r:
                fast.append(r[k])
                if "vit" in key:
                    fast_vit.append(r[k])
    if fast:
        m["infer/min_fast_speedup"] = min(fast)  # the export must never make a model slower
        m["infer/best_fast_speedup"] = max(fast)
    if fast_vit:
        m["infer/best_fast_speedup_vit"] = max(fast_vit)
    semi = [r[k] for r in results.get("inference", {}).values() for k in ("semi_eager_speedup", "semi_graph_speedup") if k in r]
    if semi:
        m["infer/best_semi_structured_speedup"] = max(semi)
    speedups = [row["best_speedup"] for row in results.get("gemm", []) if row.get("best_speedup") is not None]
    if speedups:
        m["gemm/best_speedup"] = max(speedups)
    kc = results.get("mask_kernel", {})
    if kc.get("all_equal") is not None:
        m["mask_kernel/cuda_nm_mask_equals_reference"] = float(kc["all_equal"])
    for k, v in kc.items():
        if k.endswith("_ms") or k.endswith("_over_nm_mask"):
            m[f"mask_kernel/{k}"] = v
    return m


def markdown(results: dict) -> str:
    """Readable tables of every figure, headed by the device and versions."""
    env = results["env"]
    lines = [f"# Throughput on {env.get('gpu')}",
             f"torch {env['torch']}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, cuSPARSELt {env.get('cusparselt')}, "
             f"Triton {env.get('triton')}; {results.get('quick') and 'QUICK (toy sizes)' or 'full sizes'}", ""]
    if results.get("train"):
        lines += ["## Training step (median ms; ratio to dense)", "",
                  "| model | " + " | ".join(v[0] for v in TRAIN_VARIANTS) + " |", "|---" * (len(TRAIN_VARIANTS) + 1) + "|"]
        for name, r in results["train"].items():
            cells = []
            for v, _ in TRAIN_VARIANTS:
                ms = r.get(f"{v}_ms")
                ratio = r.get(f"{v}_over_dense")
                cells.append("-" if ms is None else f"{ms:.2f}" + ("" if ratio is None else f" ({ratio:.3f}x)"))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if results.get("inference"):
        lines += ["## Inference (median ms; speed-up over dense in the same mode)", "",
                  "| model / dtype / batch | dense eager | dense graph | semi-structured eager | semi graph | measured export eager | measured export graph | sparse layers kept |",
                  "|---|---|---|---|---|---|---|---|"]

        def cell(r, ms, sp):
            if ms not in r:
                err = r.get(ms.rsplit("_", 1)[0] + "_error", "")
                return "skipped (time budget)" if "time budget" in err else ("failed" if err else "-")
            return f"{r[ms]:.2f}" + (f" ({r[sp]:.2f}x)" if sp in r else "")
        for key, r in results["inference"].items():
            lines.append(f"| {key} | {cell(r, 'dense_eager_ms', '')} | {cell(r, 'dense_graph_ms', '')} | "
                         f"{cell(r, 'semi_eager_ms', 'semi_eager_speedup')} | {cell(r, 'semi_graph_ms', 'semi_graph_speedup')} | "
                         f"{cell(r, 'fast_eager_ms', 'fast_eager_speedup')} | {cell(r, 'fast_graph_ms', 'fast_graph_speedup')} | "
                         f"{r.get('fast_graph_sparse_layers', '-')} |")
        lines.append("")
        for key, r in results["inference"].items():
            for mode in ("eager", "graph"):
                e2e = r.get(f"fast_{mode}_end_to_end")
                if e2e and e2e.get("sparse_ms") is not None:
                    lines.append(f"- {key}, {mode}: the export's whole-model check measured dense {e2e['dense_ms']:.2f} ms vs "
                                 f"{e2e['sparse_ms']:.2f} ms with its sparse layers ({e2e['speedup']:.2f}x) and kept {e2e['kept']}")
        lines.append("")
        lines += ["## Per-layer GEMMs at export time (unique shapes; ms under CUDA graph)", "",
                  "| model / dtype / batch | weight | input | dense ms | cusparselt ms | semi_structured ms | dense/best | kept |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, r in results["inference"].items():
            seen = set()
            for row in r.get("fast_graph_layers", []):
                sig = (tuple(row["weight_shape"]), tuple(row["input_shape"]))
                if sig in seen:
                    continue
                seen.add(sig)
                sp = row["sparse_ms"]
                fmt = lambda t: f"{t:.4f}" if isinstance(t, float) else "failed"  # noqa: E731
                times = [t for t in sp.values() if isinstance(t, float)]
                ratio = f"{row['dense_ms'] / min(times):.2f}x" if times else "-"
                lines.append(f"| {key} | {'x'.join(map(str, row['weight_shape']))} | {'x'.join(map(str, row['input_shape']))} | "
                             f"{row['dense_ms']:.4f} | {fmt(sp.get('cusparselt'))} | {fmt(sp.get('semi_structured'))} | {ratio} | {row['choice']} |")
        lines.append("")
    if results.get("gemm"):
        lines += ["## Single GEMMs (out x in weight, tokens; ms)", "",
                  "| out x in | tokens | dtype | graph | dense ms | dense TFLOP/s | cusparselt ms | semi_structured ms | best speed-up |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in results["gemm"]:
            sp = row["sparse_ms"]
            fmt = lambda t: f"{t:.4f}" if isinstance(t, float) else "failed"  # noqa: E731
            best = "-" if row["best_speedup"] is None else f"{row['best_speedup']:.2f}x"
            lines.append(f"| {row['out']}x{row['in']} | {row['tokens']} | {row['dtype']} | {row['graph']} | {row['dense_ms']:.4f} | "
                         f"{row['tflops_dense']:.0f} | {fmt(sp.get('cusparselt'))} | {fmt(sp.get('semi_structured'))} | {best} |")
        lines.append("")
    kc = results.get("mask_kernel", {})
    if kc.get("all_equal") is not None:
        lines += [f"`nm_mask` on CUDA tensors equals the argsort reference on all {len(kc['checks'])} checks: {kc['all_equal']}; "
                  f"ResNet-50 conv weights ({kc['resnet50_conv_weights']}): nm_mask {kc['resnet50_nm_mask_ms']:.3f} ms, "
                  f"argsort on the GPU {kc['resnet50_argsort_ms']:.3f} ms ({kc['resnet50_argsort_over_nm_mask']:.1f}x).", ""]
    if results.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in results["errors"]]
    return "\n".join(lines) + "\n"


def write(results: dict, out_dir: Path, slug: str) -> Path:
    results["metrics"] = flatten_metrics(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{slug}.json"
    write_results_json(path, results, default=str, ensure_ascii=True)
    write_text(out_dir / f"{slug}.md", markdown(results))
    return path


def check_thresholds(path: Path, slug: str) -> int:
    """Run ci.check against ci/thresholds/throughput_<slug>.yaml; 0 when none exists for this GPU."""
    thresholds = REPO / "ci" / "thresholds" / f"throughput_{slug}.yaml"
    if not thresholds.is_file():
        print(f"no thresholds file {thresholds.relative_to(REPO)} for this GPU: figures not checked")
        return 0
    from nm_plugins.verdicts.check import main as check_main
    return check_main([str(path), str(thresholds)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "results" / "throughput"), help="folder for <gpu>.json and <gpu>.md")
    ap.add_argument("--quick", action="store_true", help="toy sizes (a dry run of every section)")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("THROUGHPUT_BUDGET_S", 420.0)),
                    help="wall-clock budget (default $THROUGHPUT_BUDGET_S or 420); later sections skip what does not fit")
    ap.add_argument("--sections", default="kernel,train,infer,gemm", help="comma-separated subset of kernel,train,infer,gemm")
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu (cpu + --quick: dry run of the GPU sections)")
    ap.add_argument("--no-check", action="store_true", help="do not exit 1 when a figure falls short of its threshold")
    ap.add_argument("--models", default="", help="comma-separated timm names: only these models' train/infer rows")
    args = ap.parse_args(argv)
    budget = Budget(args.budget_s)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if (args.device == "auto" and cuda) else ("cpu" if args.device == "auto" else args.device))
    out_dir = Path(args.out)
    if device.type != "cuda" and not (args.quick and args.device == "cpu"):
        print("No CUDA GPU here: the GPU part of the throughput suite (training-step ratios, 2:4 inference, "
              "per-layer GEMMs) is skipped. Running the CPU part only.")
        res = {"env": environment(device), "cpu": cpu_part(args.quick)}
        res["metrics"] = {f"cpu/{k}": v for k, v in res["cpu"].items() if isinstance(v, (int, float))}
        res["metrics"].update({f"cpu/train_resnet18/{k}": v for k, v in res["cpu"]["train_resnet18"].items()
                               if isinstance(v, (int, float))})
        out_dir.mkdir(parents=True, exist_ok=True)
        write_results_json(out_dir / "cpu.json", res, ensure_ascii=True)
        for k, v in res["metrics"].items():
            print(f"  {k:45s} {v:.4g}")
        print(f"wrote {out_dir / 'cpu.json'}")
        return 0
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    env = environment(device)
    slug = gpu_slug(env["gpu"]) + ("_quick" if args.quick else "")
    results = {"env": env, "quick": args.quick, "errors": [], "train": {}, "inference": {}, "gemm": []}
    print(json.dumps(env))
    sections = args.sections.split(",")
    wanted = [m for m in args.models.split(",") if m]  # also the order of the rows
    reps = 5 if args.quick else 20

    def guarded(label, fn):
        t0 = time.time()
        try:
            fn()
        except Exception as exc:
            results["errors"].append(f"{label}: {type(exc).__name__}: {str(exc)[:300]}")
            print(traceback.format_exc(), file=sys.stderr)
        print(f"[{time.time() - budget.start:6.1f}s] {label} done in {time.time() - t0:.1f}s", flush=True)
        write(results, out_dir, slug)

    if "kernel" in sections:
        guarded("mask kernel", lambda: results.__setitem__("mask_kernel", check_mask_kernel(device, args.quick)))
    if "train" in sections:
        for name, cfg in train_configs(args.quick):
            if wanted and name not in wanted:
                continue
            if budget.left() < 120 and not args.quick:
                results["errors"].append(f"train {name}: skipped, time budget")
                continue
            guarded(f"train {name}", lambda name=name, cfg=cfg: results["train"].__setitem__(
                name, measure_training(name, cfg, device, budget, rounds=2 if args.quick else 3,
                                       steps=1 if args.quick else 6)))
    if "infer" in sections:
        dtypes = (torch.float16, torch.bfloat16)
        configs = infer_configs(args.quick)
        if wanted:
            configs = sorted((c for c in configs if c[0] in wanted), key=lambda c: wanted.index(c[0]))
        for name, img, batches in configs:
            for batch in batches:
                for dtype in dtypes:
                    key = f"{name}/{str(dtype).split('.')[-1]}/b{batch}"
                    if budget.left() < 45:
                        results["errors"].append(f"infer {key}: skipped, time budget")
                        continue
                    guarded(f"infer {key}", lambda key=key, name=name, img=img, batch=batch, dtype=dtype:
                            results["inference"].__setitem__(key, measure_inference(name, img, batch, dtype, device, reps, budget)))
    if "gemm" in sections:
        if budget.left() > 20 or args.quick:
            guarded("gemm", lambda: results["gemm"].extend(measure_gemms(device, torch.float16, args.quick, reps)))
        else:
            results["errors"].append("gemm: skipped, time budget")
    path = write(results, out_dir, slug)
    print(markdown(results))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    rc = check_thresholds(path, slug) if device.type == "cuda" and not args.quick else 0
    return 0 if args.no_check else rc


if __name__ == "__main__":
    sys.exit(main())
