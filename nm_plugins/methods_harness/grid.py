"""The harness's grid: which methods run on which proxy, with which settings, seeds and patterns, and which runs
reuse committed per-seed values instead of training.

* Methods: the registry (``nm_plugins.core.methods.method_names``) minus :data:`EXCLUDED`; each needs its settings
  in ``configs/methods/harness.yaml`` for the proxy (a setting naming a step or epoch count must be given there).
* Patterns and seeds: the plan of the proxy's thresholds file (``ci/thresholds/methods_<proxy>.yaml``), committed
  before the run.
* Reuse: SR-STE and STE per-seed values of the proxy's committed results (:data:`PROXIES` ``committed``) for a seed
  those results hold, when the harness's config of that run equals the committed grid's (:func:`same_config`);
  the proxy's ``verify`` run (SR-STE, one seed) is always trained and must reproduce the committed values exactly
  (:func:`check_reproduced`).
"""
from __future__ import annotations

import json
from pathlib import Path

from nm_plugins.runtime.config import read_yaml
from nm_plugins.runtime.project import project_root

REPO = project_root()
SETTINGS = REPO / "configs" / "methods" / "harness.yaml"
# Registered methods the harness does not run, and why (documented in the thresholds files' plans).
EXCLUDED = {"dense": "no N:M mask: nothing to compare with SR-STE's N:M training",
            "fixed": "a mask frozen at initialisation: not a training method of the papers compared",
            "asp": "prune once, then fine-tune: the paper's baseline, judged in results/imagenet-proxy"}
REUSABLE = ("srste", "ste")  # rows the proxies' committed results hold
SMOKE_METHODS = ("srste", "ste")
# One entry per proxy: its trainer, base config, folders, committed rows to reuse and the run that verifies them.
PROXIES = {
    "imagenet_proxy": {
        "trainer": "classify", "config": REPO / "configs" / "imagenet_proxy" / "fashion_mnist.yaml",
        "thresholds": "methods_imagenet_proxy", "folder": "methods-imagenet-proxy",
        "committed": REPO / "results" / "imagenet-proxy-study" / "results.json", "verify": ("srste", "1:16", 0),
        "compare": ("top1", "top5", "sad_final", "masks_sha"),
        "per_seed": (("top1", "top1"), ("top5", "top5"), ("sad", "sad_final")),
        "smoke_patterns": ("1:8", "1:16"), "smoke_seeds": (0, 1)},
    "translation_proxy": {
        "trainer": "translation", "config": REPO / "configs" / "translation" / "proxy_catalogs_en_de.yaml",
        "thresholds": "methods_translation_proxy", "folder": "methods-translation-proxy",
        "committed": REPO / "results" / "translation-proxy" / "results.json", "verify": ("srste", "2:4", 0),
        "compare": ("bleu", "chrf", "test_nll", "sad_final", "masks_sha"),
        "per_seed": (("bleu", "bleu"), ("bleu_tok", "bleu_tok"), ("chrf", "chrf"), ("valid_loss", "valid_loss"),
                     ("test_nll", "test_nll"), ("sad", "sad_final")),
        "smoke_patterns": ("2:4",), "smoke_seeds": (0,)},
}
# Keys of a resolved config that name where a run writes, not what it computes.
WHERE_KEYS = (("name",), ("train", "out_dir"), ("train", "progress"))


def harness_methods(registered: "tuple | list", settings: dict, proxy: str) -> list:
    """The methods to run on ``proxy``: SR-STE and STE, then ``registered`` in order, minus :data:`EXCLUDED`; ValueError naming a
    method without settings in ``settings`` (configs/methods/harness.yaml) for that proxy."""
    given = ((settings.get(proxy) or {}).get("methods") or {})
    methods = [m for m in REUSABLE if m in registered] + [m for m in registered if m not in EXCLUDED and m not in REUSABLE]
    missing = [m for m in methods if m not in given]
    if missing:
        raise ValueError(f"{SETTINGS}: {proxy}.methods has no settings for the registered method(s) {missing}; "
                         f"add them (an empty mapping keeps the method's defaults) or add them to EXCLUDED with a reason")
    return methods


def method_settings(method: str, settings: dict, proxy: str, defaults: "dict | None" = None) -> dict:
    """The ``method_args`` of ``method`` on ``proxy`` from ``settings``; with the method's ``defaults``: ValueError
    for a setting the method does not have, and for a step/epoch setting (a schedule) not given for the proxy."""
    args = dict(((settings.get(proxy) or {}).get("methods") or {}).get(method) or {})
    if defaults is not None:
        unknown = sorted(set(args) - set(defaults))
        if unknown:
            raise ValueError(f"{SETTINGS}: {proxy}.methods.{method} sets {unknown}, which {method} does not have "
                             f"(its settings: {sorted(defaults) or 'none'})")
        schedule = sorted(k for k in defaults if is_schedule_setting(k) and k not in args)
        if schedule:
            raise ValueError(f"{SETTINGS}: {proxy}.methods.{method} must set its schedule setting(s) {schedule} for "
                             f"this proxy's {(settings.get(proxy) or {}).get('steps')} steps (the defaults are "
                             f"sized for another schedule)")
    return args


def is_schedule_setting(key: str) -> bool:
    """Whether a method setting's name says it counts steps or epochs (``ramp_end_step``, ``refresh_every``,
    ``hard_from``): a schedule, which the harness requires per proxy."""
    return any(w in key for w in ("step", "epoch", "every")) or key.endswith("_from")


def registry_defaults(method: str) -> dict:
    """The registered method's settings and their defaults."""
    from nm_plugins.core.methods import method_class
    return dict(method_class(method).defaults)


def _value(v) -> str:
    return f"'{v}'" if isinstance(v, str) else json.dumps(v)


def run_name(method: str, pattern: str, seed: int) -> str:
    """``srste_1_16_s0``: the committed grids' run names."""
    return f"{method}_{pattern.replace(':', '_')}_s{seed}"


def row_key(method: str, pattern: str) -> str:
    """``srste_1:16``: the per-seed row of a method at a pattern."""
    return f"{method}_{pattern}"


def run_overrides(proxy: str, method: str, pattern: str, seed: int, args: dict, out_dir: Path,
                  smoke_overrides: list) -> list:
    """The trainer overrides of one harness run (the committed grids' own, then the method's settings)."""
    name = run_name(method, pattern, seed)
    out = [f"sparsity.method={method}", f"sparsity.pattern='{pattern}'", f"train.seed={seed}", f"name={name}"]
    out += [f"sparsity.method_args.{k}={_value(v)}" for k, v in sorted(args.items())]
    out += list(smoke_overrides) + [f"train.out_dir={out_dir / name}", "train.progress=false"]
    if proxy == "translation_proxy":
        out.append("train.threads=1")
    return out


def load_run_config(proxy: str, overrides: list) -> dict:
    """The resolved trainer config of ``proxy``'s base config with ``overrides``."""
    if PROXIES[proxy]["trainer"] == "classify":
        from nm_plugins.train.config import load_config
    else:
        from nm_plugins.translation.config import load_config
    return load_config(PROXIES[proxy]["config"], overrides)


def committed_config(proxy: str, method: str, pattern: str, seed: int) -> "dict | None":
    """The resolved config the committed grid (high-sparsity study / translation proxy) ran ``method`` at
    ``pattern`` and ``seed`` with, by today's code; None when that grid has no such run."""
    name = run_name(method, pattern, seed)
    if PROXIES[proxy]["trainer"] == "classify":
        from nm_plugins.train.reproduce import proxy_runs  # the study's cells, its extension's seeds included
        for run, _variant, overrides in proxy_runs(False, "high-sparsity"):
            if run == name:
                return load_run_config(proxy, overrides + ["train.out_dir=.", "train.progress=false"])
        return None
    from nm_plugins.translation.reproduce import proxy_runs
    for run, overrides in proxy_runs(False, Path(".")):
        if run == name:
            return load_run_config(proxy, overrides)
    return None


def _without_where(config: dict) -> dict:
    out = json.loads(json.dumps(config, sort_keys=True, default=str))
    for path in WHERE_KEYS:
        node = out
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return out


def config_differences(a: dict, b: dict, prefix: str = "") -> list:
    """``key: a != b`` for every key where two resolved configs differ, ignoring where a run writes (name,
    train.out_dir, train.progress)."""
    if not prefix:
        a, b = _without_where(a), _without_where(b)
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} != {vb!r}")
    return out


def same_config(a: dict, b: dict) -> bool:
    """Whether two resolved configs compute the same run (:func:`config_differences` is empty)."""
    return not config_differences(a, b)


def read_committed(proxy: str) -> dict:
    """The committed results the proxy's SR-STE/STE rows may come from ({} when the file is absent)."""
    path = PROXIES[proxy]["committed"]
    if not Path(path).is_file():
        return {}
    from nm_plugins.runtime.results import read_json
    return read_json(path)


def plan_runs(proxy: str, methods: list, patterns: list, seeds: list, settings: dict, runs_dir: Path,
              committed: dict, smoke_overrides: list = (), with_defaults: bool = True) -> list:
    """Every cell (method x pattern x seed) of ``proxy`` as a dict: name, row, method, pattern, seed, overrides,
    action ("run" | "reuse" | "verify": trained, then compared with the committed values) and why."""
    spec = PROXIES[proxy]
    verify = spec["verify"]
    per_seed = committed.get("per_seed") or {}
    cells = []
    for method in methods:
        args = method_settings(method, settings, proxy, registry_defaults(method) if with_defaults else None)
        for pattern in patterns:
            for seed in seeds:
                overrides = run_overrides(proxy, method, pattern, seed, args, runs_dir, list(smoke_overrides))
                cell = {"name": run_name(method, pattern, seed), "row": row_key(method, pattern), "method": method,
                        "pattern": pattern, "seed": seed, "overrides": overrides, "action": "run",
                        "why": "a new method" if method not in REUSABLE else ""}
                if method in REUSABLE:
                    cell.update(reuse_decision(proxy, cell, per_seed))
                    if (method, pattern, seed) == verify and cell["action"] == "reuse":
                        cell.update(action="verify", why="re-run to check that the committed values are reproduced exactly")
                cells.append(cell)
    if any(c["action"] == "reuse" for c in cells) and not any(c["action"] == "verify" for c in cells):
        raise ValueError(f"{proxy}: committed values would be reused without the verification run {verify} "
                         f"(its pattern and seed must be in the plan)")
    return sorted(cells, key=lambda c: c["action"] != "verify")  # the verification first: a mismatch stops early


def reuse_decision(proxy: str, cell: dict, per_seed: dict) -> dict:
    """{"action": "reuse" | "run", "why": ...} for an SR-STE/STE cell: reuse when the committed per-seed values hold
    its seed and the committed grid ran it with the same config."""
    row, seed = per_seed.get(cell["row"]) or {}, str(cell["seed"])
    metrics = [m for m, _ in PROXIES[proxy]["per_seed"]]
    if not row or any(seed not in (row.get(m) or {}) for m in metrics if m in row) or not any(m in row for m in metrics):
        return {"action": "run", "why": f"no committed value of {cell['row']} seed {seed}"}
    ref = committed_config(proxy, cell["method"], cell["pattern"], cell["seed"])
    if ref is None:
        return {"action": "run", "why": "the committed grid has no such run"}
    diff = config_differences(load_run_config(proxy, cell["overrides"]), ref)
    if diff:
        return {"action": "run", "why": "config differs from the committed run's: " + "; ".join(diff[:5])}
    return {"action": "reuse", "why": f"committed value ({PROXIES[proxy]['committed'].relative_to(REPO)}), same config"}


def committed_run(committed: dict, name: str) -> "dict | None":
    """The committed run summary named ``name`` (None when absent)."""
    return next((r for r in committed.get("runs") or [] if isinstance(r, dict) and r.get("name") == name), None)


def check_reproduced(proxy: str, summary: dict, committed: dict) -> dict:
    """The comparison of a verification run with the committed run of the same name: {"name", "fields": {field:
    [committed, now]}, "equal": True}; RuntimeError naming every field that differs (the committed SR-STE/STE values
    cannot be reused then)."""
    name = summary["name"]
    ref = committed_run(committed, name)
    if ref is None:
        raise RuntimeError(f"{proxy}: the committed results have no run {name} to verify against")
    fields = {f: [ref.get(f), summary.get(f)] for f in PROXIES[proxy]["compare"]}
    bad = [f"{f}: committed {a!r}, now {b!r}" for f, (a, b) in fields.items() if a != b]
    if bad:
        raise RuntimeError(f"{proxy}: re-running {name} does not reproduce the committed values ({'; '.join(bad)}): the "
                           f"committed SR-STE/STE rows cannot be reused; the code changed what a run computes")
    return {"name": name, "fields": fields, "equal": True}


def read_plan(proxy: str, smoke: bool) -> dict:
    """The proxy's thresholds file (its plan holds patterns and seeds; SMOKE: the _smoke file, and the proxy's
    smoke patterns and seeds)."""
    stem = PROXIES[proxy]["thresholds"] + ("_smoke" if smoke else "")
    path = REPO / "ci" / "thresholds" / f"{stem}.yaml"
    spec = read_yaml(path)
    plan = spec.get("plan") or {}
    if not smoke and (not plan.get("patterns") or not plan.get("seeds")):
        raise ValueError(f"{path}: plan.patterns and plan.seeds must be fixed before the run")
    patterns = list(PROXIES[proxy]["smoke_patterns"] if smoke else plan["patterns"])
    seeds = [int(s) for s in (PROXIES[proxy]["smoke_seeds"] if smoke else plan["seeds"])]
    return {"path": path, "spec": spec, "patterns": patterns, "seeds": seeds}
