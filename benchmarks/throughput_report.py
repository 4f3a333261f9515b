"""Throughput suite, results: the flat ``metrics`` that ci.check reads, the markdown tables, the files."""
from __future__ import annotations

from pathlib import Path

from benchmarks.throughput_train import TRAIN_VARIANTS
from nm_plugins.runtime.results import write_results_json, write_text


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
