"""``make reproduce-methods``: every registered N:M training method (minus dense, fixed, asp) on the ImageNet proxy's
high-sparsity study (1:8, 1:16) and on the translation proxy (2:4), judged against SR-STE with the claims of
ci/thresholds/methods_<proxy>.yaml, and a leaderboard (results.md, results.json, the report page).

Environment:
  SMOKE=1          a short version (SR-STE and STE only, the proxies' SMOKE schedules, thresholds *_smoke.yaml;
                   results under runs/methods-*-smoke unless RESULTS_DIR is set): < 2 minutes on an idle machine.
  METHODS_PROXIES  comma-separated proxies to run (default: imagenet_proxy,translation_proxy).
  PROXY_JOBS       parallel processes (default 2; each run has one torch thread and is deterministic, so the numbers
                   do not depend on it).
  GRID_ONLY        comma-separated shell patterns of run names (e.g. ``bimask_1_16_s0``) to run a subset: written
                   to the results without a threshold check (measuring one run per method: the plan's seeds rule).
  METHODS_BENCH=0  skip the CPU step-time measurement (its column then says '-').
  RESULTS_DIR      the folder that receives methods-imagenet-proxy/ and methods-translation-proxy/ (default results/;
                   SMOKE: runs/).
  RUNS_DIR         where the per-run folders go (default runs/).

Runs go through nm_plugins.runtime.grid.run_or_reuse: running the target again reuses finished runs and resumes an
interrupted one. SR-STE/STE rows reuse the committed per-seed values only when their configs equal the committed
grids' and the verification run reproduces the committed values exactly (nm_plugins/methods_harness/grid.py).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from nm_plugins.methods_harness import grid as G
from nm_plugins.runtime.cli import reproduce_parser
from nm_plugins.runtime.project import project_root, require_project

REPO = project_root()
# (per-seed metric, label) shown by the leaderboard, the first two also as paired differences vs SR-STE
METRICS = {"imagenet_proxy": [("top1", "top-1 (%)"), ("top5", "top-5 (%)")],
           "translation_proxy": [("test_nll", "test NLL"), ("chrf", "chrF"), ("bleu", "BLEU")]}
SPECS = {"top1": ".2f", "top5": ".2f", "test_nll": ".3f", "chrf": ".2f", "bleu": ".2f"}


def _env_flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    return default if not raw else raw not in ("0", "false", "no")


def smoke_overrides(proxy: str) -> list:
    """The SMOKE schedule of a proxy (its own reproduction's)."""
    if G.PROXIES[proxy]["trainer"] == "classify":
        from nm_plugins.train.reproduce import PROXY_SMOKE_OVERRIDES
    else:
        from nm_plugins.translation.reproduce import PROXY_SMOKE_OVERRIDES
    return list(PROXY_SMOKE_OVERRIDES)


def train_one(proxy: str, overrides: list, pattern: str) -> dict:
    """One run in a worker process, through the resumable grid; its summary (without the config and examples)
    with cpu_seconds and the properties of its trained masks."""
    from nm_plugins.methods_harness.masks import run_mask_properties
    from nm_plugins.runtime.grid import run_or_reuse
    cfg = G.load_run_config(proxy, overrides)
    out = Path(cfg["train"]["out_dir"])
    t0, cpu0 = time.time(), time.process_time()
    if G.PROXIES[proxy]["trainer"] == "classify":
        from nm_plugins.train.classify import LAST_NAME, run
    else:
        from nm_plugins.translation.train import run
        LAST_NAME = "checkpoint.pt"
    summary = run_or_reuse(out, out.name, cfg, lambda resume: run(cfg, resume=resume), checkpoint=out / LAST_NAME)
    reused = summary["seconds"] > time.time() - t0 + 1.0  # finished before: the stored summary
    summary = {k: v for k, v in summary.items() if k not in ("config", "examples")}
    summary.update(cpu_seconds=None if reused else time.process_time() - cpu0, reused_run=reused,
                   load_average_end=os.getloadavg()[0],
                   masks=run_mask_properties(out, pattern, LAST_NAME, cfg["sparsity"]["method"],
                                             cfg["sparsity"].get("method_args") or {}))
    return summary


def train_all(proxy: str, cells: list, committed: dict, jobs: int) -> "tuple[dict, dict | None]":
    """({name: summary} of the cells to train, the verification record) in ``jobs`` spawned processes; the
    verification run is submitted first and checked as soon as it ends (a mismatch cancels the rest and raises)."""
    import concurrent.futures
    import multiprocessing
    summaries, verification = {}, None
    if not cells:
        return summaries, verification
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(train_one, proxy, c["overrides"], c["pattern"]): c for c in cells}
        try:
            for future in concurrent.futures.as_completed(futures):
                c = futures[future]
                s = summaries[c["name"]] = future.result()
                print(f"{proxy} {c['name']:>22}: {_line(s)} ({s['seconds']:.0f} s{', reused' if s['reused_run'] else ''})",
                      flush=True)
                if c["action"] == "verify":
                    verification = G.check_reproduced(proxy, s, committed)
                    print(f"{proxy}: {c['name']} reproduces the committed values exactly: SR-STE/STE rows reused", flush=True)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return summaries, verification


def _line(s: dict) -> str:
    if "top1" in s:
        return f"top-1 {s['top1']:.2f}% SAD {s['sad_final']:.4f}"
    return f"test NLL {s['test_nll']:.3f} chrF {s['chrf']:.2f} BLEU {s['bleu']:.2f} SAD {s['sad_final']:.4f}"


def per_seed_values(proxy: str, cells: list, summaries: dict, committed: dict) -> dict:
    """{row: {metric: {seed: value}}} of every cell: trained ones from their summaries, reused ones from the
    committed per-seed values; a cell neither trained nor reused (GRID_ONLY) is left out."""
    out: dict = {}
    fields = G.PROXIES[proxy]["per_seed"]
    for c in cells:
        row = out.setdefault(c["row"], {})
        if c["name"] in summaries:
            for metric, key in fields:
                if summaries[c["name"]].get(key) is not None:
                    row.setdefault(metric, {})[str(c["seed"])] = summaries[c["name"]][key]
        elif c["action"] == "reuse":
            for metric, _ in fields:
                values = (committed["per_seed"].get(c["row"]) or {}).get(metric) or {}
                if str(c["seed"]) in values:
                    row.setdefault(metric, {})[str(c["seed"])] = values[str(c["seed"])]
    return {row: values for row, values in out.items() if values}


def mask_summary(proxy: str, cells: list, summaries: dict, committed: dict) -> dict:
    """{row: {"runs", "recorded", "valid_nm", "valid_2_4", "fits_2_4", "transposable"}}: how many runs of the row
    have each property (reused runs: from their committed run folder's checkpoint when it still exists)."""
    from nm_plugins.methods_harness.masks import run_mask_properties
    out: dict = {}
    for c in cells:
        props = None
        if c["name"] in summaries:
            props = summaries[c["name"]].get("masks")
        elif c["action"] == "reuse":
            ref = G.committed_run(committed, c["name"]) or {}
            if ref.get("out_dir") and Path(ref["out_dir"]).is_dir():
                props = run_mask_properties(ref["out_dir"], c["pattern"], method=c["method"])
        else:
            continue
        row = out.setdefault(c["row"], {"runs": 0, "recorded": 0, "valid_nm": 0, "valid_2_4": 0 if c["pattern"] == "2:4" else None,
                                        "fits_2_4": 0, "transposable": 0})
        row["runs"] += 1
        if props:
            row["recorded"] += 1
            for key in ("valid_nm", "valid_2_4", "fits_2_4", "transposable"):
                if row[key] is not None and props.get(key):
                    row[key] += 1
    return out


def bench(proxy: str, cells: list, smoke: bool) -> dict:
    """CPU step time of every row's method against dense on the proxy's model (:mod:`.bench`), interleaved."""
    from nm_plugins.methods_harness.bench import ratios, step_times
    first = {}
    for c in cells:
        first.setdefault(c["row"], c)
    configs = {row: G.load_run_config(proxy, c["overrides"]) for row, c in first.items()}
    any_cell = next(iter(first.values()))
    configs = {"dense": G.load_run_config(proxy, [o for o in any_cell["overrides"] if not o.startswith("sparsity.method")]
                                          + ["sparsity.method=dense"]), **configs}
    rounds, warmup = (3, 1) if smoke else (20, 3)
    times = step_times(configs, G.PROXIES[proxy]["trainer"], rounds, warmup)
    return {"rows": ratios(times), "rounds": rounds, "warmup_rounds": warmup, "threads": 1,
            "what": "one training step (forward, loss, backward, optimizer step incl. the method's step term) of the "
                    "proxy's model on a fixed random batch of its batch size; methods interleaved within every round; "
                    "ratio = median step time / dense's median"}


def flat_metrics(per_seed: dict, masks: dict, bench_rows: dict) -> dict:
    """The flat ``metrics`` the thresholds' checks read: <row>/<metric>_mean, <row>/masks_<property> (fraction of
    the row's runs with recorded masks), <row>/step_ratio."""
    import statistics
    out = {}
    for row, values in per_seed.items():
        for metric, by_seed in values.items():
            if by_seed:
                out[f"{row}/{metric}_mean"] = statistics.fmean(float(v) for v in by_seed.values())
    for row, m in masks.items():
        if m["recorded"]:
            for key in ("valid_nm", "valid_2_4", "fits_2_4", "transposable"):
                if m[key] is not None:
                    out[f"{row}/masks_{key}"] = m[key] / m["recorded"]
    for row, b in bench_rows.items():
        out[f"{row}/step_ratio"] = b["ratio_vs_dense"]
    return out


def reproduce_proxy(proxy: str, smoke: bool, results_dir: Path, runs_root: Path, jobs: int) -> int:
    """Plan, train (or reuse), judge and write one proxy's results; the threshold check's exit status."""
    from nm_plugins.core.methods import method_names
    from nm_plugins.runtime.config import read_yaml
    from nm_plugins.runtime.grid import only
    from nm_plugins.runtime.reproduce import claim_rows, run_check, write_claims
    from nm_plugins.runtime.results import write_results_json, write_text
    from nm_plugins.verdicts.leaderboard import leaderboard, markdown

    spec = G.PROXIES[proxy]
    plan = G.read_plan(proxy, smoke)
    settings = read_yaml(G.SETTINGS)
    methods = list(G.SMOKE_METHODS) if smoke else G.harness_methods(method_names(), settings, proxy)
    committed = {} if smoke else G.read_committed(proxy)
    runs_dir = runs_root / (spec["folder"] + ("-smoke" if smoke else ""))
    t0, load0 = time.time(), os.getloadavg()[0]
    cells = G.plan_runs(proxy, methods, plan["patterns"], plan["seeds"], settings, runs_dir, committed,
                        smoke_overrides(proxy) if smoke else [], with_defaults=not smoke)
    subset = only([c["name"] for c in cells])
    to_train = [c for c in cells if c["action"] != "reuse" and (subset is None or c["name"] in subset)]
    print(f"{proxy}: {len(cells)} cells: {sum(c['action'] != 'reuse' for c in cells)} to train "
          f"({len(to_train)} selected), {sum(c['action'] == 'reuse' for c in cells)} reused", flush=True)
    if proxy == "translation_proxy" and to_train:
        from nm_plugins.translation.train import prepare_data
        prepare_data(G.load_run_config(proxy, to_train[0]["overrides"]))  # corpus + vocabulary cached once
    summaries, verification = train_all(proxy, to_train, committed, jobs)
    order = sorted(cells, key=lambda c: (methods.index(c["method"]), plan["patterns"].index(c["pattern"]), c["seed"]))
    per_seed = per_seed_values(proxy, order, summaries, committed)
    masks = mask_summary(proxy, order, summaries, committed)
    bench_result = bench(proxy, order, smoke) if _env_flag("METHODS_BENCH", True) else None
    wall = time.time() - t0
    cpu = sum(s["cpu_seconds"] or 0.0 for s in summaries.values())
    reused_seeds = {}
    for c in order:
        if c["action"] == "reuse":
            reused_seeds.setdefault(c["row"], []).append(c["seed"])
    results = {
        "name": spec["folder"] + ("-smoke" if smoke else ""), "proxy": proxy, "smoke": smoke,
        "config": str(Path(spec["config"]).relative_to(REPO)), "settings": str(G.SETTINGS.relative_to(REPO)),
        "methods": methods, "excluded": G.EXCLUDED, "patterns": plan["patterns"], "seeds": plan["seeds"],
        "cells": [{k: c[k] for k in ("name", "row", "action", "why")} for c in order],
        "reused_seeds": reused_seeds, "committed": str(Path(spec["committed"]).relative_to(REPO)) if committed else None,
        "verification": verification, "per_seed": per_seed, "masks": masks, "bench": bench_result,
        "runs": [summaries[c["name"]] for c in order if c["name"] in summaries],
        "wall_seconds": wall, "cpu_seconds": cpu, "parallel_processes": jobs,
        "load_average": {"start": load0, "end": os.getloadavg()[0]},
        "description": (f"{proxy} ({'SMOKE schedule' if smoke else 'the proxy schedule'}): {len(methods)} methods x "
                        f"patterns {plan['patterns']} x seeds {plan['seeds']}; {len(summaries)} runs trained in {jobs} "
                        f"processes ({wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU; load average {load0:.1f} at start, "
                        f"{os.getloadavg()[0]:.1f} at end on {os.cpu_count()} cores), "
                        f"{sum(c['action'] == 'reuse' for c in cells)} per-seed values reused from {spec['committed'].name} "
                        f"of {Path(spec['committed']).parent.name}."),
    }
    results["metrics"] = flat_metrics(per_seed, masks, (bench_result or {}).get("rows") or {})
    results["claims"] = claim_rows(per_seed, plan["path"])
    results["leaderboard_metrics"] = METRICS[proxy]
    results["leaderboard"] = leaderboard(results, plan["spec"], METRICS[proxy])
    results_dir.mkdir(parents=True, exist_ok=True)
    write_results_json(results_dir / "results.json", results)
    md = [f"# {results['name']}", "", results["description"], "",
          "## Leaderboard (mean over seeds [95% t-interval]; paired differences vs SR-STE at the same pattern)", "",
          markdown(results["leaderboard"], METRICS[proxy], SPECS),
          "Published: ImageNet ResNet-50 top-1 of each paper at that pattern (the thresholds file's `published`, issue "
          "25's list); not comparable with the proxy's numbers. CPU step time: " + ((bench_result or {}).get("what") or "not measured") + ".",
          "", "## Runs", "", "| run | action | why |", "|---|---|---|"]
    md += [f"| {c['name']} | {c['action']} | {c['why']} |" for c in order]
    write_text(results_dir / "results.md", "\n".join(md) + "\n")
    write_claims(results["claims"], results_dir)
    print((results_dir / "results.md").read_text())
    if subset is not None:
        print(f"GRID_ONLY selects {len(to_train)} runs: no threshold check")
        return 0
    return run_check(results_dir / "results.json", plan["path"])


def main(argv=None) -> int:
    """Entry point of ``make reproduce-methods``."""
    reproduce_parser(__doc__, "python -m nm_plugins.methods_harness.reproduce").parse_args(argv)
    smoke = _env_flag("SMOKE")
    proxies = [p.strip() for p in (os.environ.get("METHODS_PROXIES") or ",".join(G.PROXIES)).split(",") if p.strip()]
    unknown = [p for p in proxies if p not in G.PROXIES]
    if unknown:
        print(f"reproduce-methods: METHODS_PROXIES names unknown proxies {unknown}; known: {list(G.PROXIES)}", file=sys.stderr)
        return 2
    root = Path(os.environ.get("RESULTS_DIR") or REPO / ("runs" if smoke else "results"))
    runs_root = Path(os.environ.get("RUNS_DIR") or REPO / "runs")
    jobs = int(os.environ.get("PROXY_JOBS") or 2)
    try:
        require_project(REPO)
        status = 0
        for proxy in proxies:
            folder = G.PROXIES[proxy]["folder"] + ("-smoke" if smoke else "")
            status = max(status, reproduce_proxy(proxy, smoke, root / folder, runs_root, jobs))
        return status
    except (FileNotFoundError, ValueError) as e:
        print(f"reproduce-methods: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
