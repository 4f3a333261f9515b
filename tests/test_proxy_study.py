"""Issue 20's high-sparsity proxy study (make reproduce-imagenet-study): its rows build valid 1:8/1:16 models, its
thresholds hold the pre-registered plan, finished runs are reused only when they match, and the parallel grid
gives the numbers of the sequential one."""
import json
import math
from pathlib import Path

import pytest
import timm

import nm_plugins.timm  # noqa: F401  (registers cifar_resnet8)
from nm_plugins.core.layers import sparse_layers
from nm_plugins.core.mask import is_valid_nm_mask, partial_group_size
from nm_plugins.core.sparsify import sparsify
from nm_plugins.runtime.config import read_yaml
from nm_plugins.train import reproduce
from nm_plugins.train.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("pattern", ["1:8", "1:16"])
def test_study_patterns_fit_the_proxy_model_in_whole_groups(pattern):
    """Every N:M layer of the proxy's cifar_resnet8 takes whole groups of M input channels (no partial group,
    so the SAD and the kept share are those of the pattern) and its mask keeps N of every M."""
    cfg = load_config(reproduce.PROXY_CONFIG)
    model = timm.create_model(cfg["model"]["name"], in_chans=1, num_classes=10, **cfg["model"]["kwargs"])
    sparsify(model, pattern, method="srste")
    layers = list(sparse_layers(model))
    assert len(layers) == 8
    n, m = (int(x) for x in pattern.split(":"))
    for name, layer in layers:
        assert partial_group_size(layer.weight.shape, layer.pattern) == 0, name
        assert is_valid_nm_mask(layer.mask(), layer.pattern), name
        assert layer.mask().sum().item() == layer.weight.numel() * n // m, name


def test_study_grid_and_plan_agree():
    """The rows the claims name are rows of the grid, and the seeds are the plan's (committed before the run)."""
    for study, thresholds in (("high-sparsity", "imagenet_proxy_study"), ("high-sparsity-long", "imagenet_proxy_study_long")):
        grid, seeds, stem, _ = reproduce.PROXY_STUDIES[study]
        assert stem == thresholds
        spec = read_yaml(REPO / "ci" / "thresholds" / f"{thresholds}.yaml")
        rows = {("dense" if m == "dense" else f"{m}_{p}") + (f"_{v}" if v else "") for m, p, _, v in grid}
        for claim in spec["claims"]:
            assert {claim["a"], claim["b"]} <= rows, claim["claim"]
            assert claim.get("smallest_effect") or claim.get("smallest_effect_rel"), claim["claim"]
            assert claim["smallest_effect_source"], claim["claim"]
        if study == "high-sparsity":
            assert list(seeds) == spec["plan"]["seeds"]
    names = [name for name, _, _ in reproduce.proxy_runs(False, "high-sparsity")]
    extension = sum(r[1] in reproduce.STUDY_EXTENSION["patterns"] for r in reproduce.STUDY_GRID) * \
        len(reproduce.STUDY_EXTENSION["seeds"])
    assert len(names) == len(set(names)) == len(reproduce.STUDY_GRID) * len(reproduce.STUDY_SEEDS) + extension
    assert {"ste_1_8_s12", "srste_1_8_s12"} <= set(names) and "ste_1_16_s12" not in names


def test_power_computation_of_the_plan():
    """The plan's seed count follows from the committed paired SD (results/imagenet-proxy): 80% power for 0.3
    top-1 needs 6 seeds; a 95% half-width under 0.15 (every interval resolves) needs 10."""
    from scipy.stats import t
    from statsmodels.stats.power import TTestPower
    per_seed = json.loads((REPO / "results" / "imagenet-proxy" / "results.json").read_text())["per_seed"]
    sds = []
    for p in ("2:4", "1:4"):
        a, b = per_seed[f"srste_{p}"]["top1"], per_seed[f"ste_{p}"]["top1"]
        d = [a[s] - b[s] for s in a]
        mean = sum(d) / len(d)
        sds.append(math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)))
    sd = max(sds)
    spec = read_yaml(REPO / "ci" / "thresholds" / "imagenet_proxy_study.yaml")["plan"]["power"]
    n80 = TTestPower().solve_power(effect_size=0.3 / sd, alpha=0.05, power=0.8, alternative="two-sided")
    assert n80 == pytest.approx(spec["seeds_for_80pct_power"], abs=0.01)
    resolving = next(n for n in range(2, 50) if t.ppf(0.975, n - 1) * sd / math.sqrt(n) < 0.15)
    assert resolving == spec["seeds_for_resolution"] == len(reproduce.STUDY_SEEDS)


@pytest.mark.slow
def test_parallel_grid_gives_the_sequential_numbers(tmp_path):
    """Two runs of the study grid (1 epoch of 4 steps) in 2 spawned processes: the same top-1 and SAD as in this
    process (each run is single-threaded and seeded)."""
    runs = [r for r in reproduce.proxy_runs(False, "high-sparsity") if r[0] in ("ste_1_16_s0", "srste_1_8_s1")]
    tiny = ["optim.epochs=1", "data.train_subset=512", "data.val_subset=500", "train.progress=false", "train.eval_every=1"]
    cfgs = lambda sub: [load_config(reproduce.PROXY_CONFIG, o + tiny + [f"train.out_dir={tmp_path / sub / n}"])
                        for n, _, o in runs]
    seq = reproduce._run_all(cfgs("seq"), 1, lambda it, **kw: it)
    par = reproduce._run_all(cfgs("par"), 2, lambda it, **kw: it)
    assert [(s["name"], s["top1"], s["sad_final"]) for s in seq] == [(s["name"], s["top1"], s["sad_final"]) for s in par]
    assert all(s["cpu_seconds"] > 0 for s in seq + par)
