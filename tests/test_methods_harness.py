"""Issue 25's methods harness (make reproduce-methods): its plan files validate with the claim rules, its grid
(which runs, which reuse committed values, the verification run), the reproduction check, the mask properties on
real masks, the leaderboard from synthetic per-seed data, and a SMOKE run end to end."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from nm_plugins.core.mask import nm_mask
from nm_plugins.methods_harness import grid as G
from nm_plugins.methods_harness.masks import checkpoint_masks, fits_2_4, mask_properties
from nm_plugins.runtime.config import read_yaml
from nm_plugins.verdicts.claims import evaluate_claims, spec, t_interval
from nm_plugins.verdicts.leaderboard import leaderboard, markdown, table

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = REPO / "ci" / "thresholds"
NEW = ("transposable", "decaying", "sste", "bimask", "maxq")


# ------------------------------------------------------------------------------------------------- plan
@pytest.mark.parametrize("stem", ["methods_imagenet_proxy", "methods_translation_proxy"])
def test_plan_validates_with_the_claim_rules(stem):
    """Every claim passes the claim rules' schema, compares a planned row with SR-STE at the same planned pattern,
    and is judged (not 'missing') on synthetic per-seed values of the planned rows and seeds."""
    t = read_yaml(THRESHOLDS / f"{stem}.yaml")
    plan = t["plan"]
    assert plan["committed_before_run"] is True and plan["seeds"] == list(range(len(plan["seeds"])))
    assert all(isinstance(p, str) and ":" in p for p in plan["patterns"])  # 1:16 stays a pattern, not a number
    settings = read_yaml(G.SETTINGS)
    proxy = stem.removeprefix("methods_")
    rows = {}
    for c in t["claims"]:
        s = spec(c)
        method, _, pattern = s["a"].rpartition("_")
        assert s["b"] == f"srste_{pattern}" and pattern in plan["patterns"], c["claim"]
        assert method in settings[proxy]["methods"] and method not in G.EXCLUDED
        rows[s["a"]] = rows[s["b"]] = True
    per_seed = {row: {m: {str(i): 50.0 + 0.1 * i + 0.01 * hash(row) % 3 for i in plan["seeds"]}
                      for m in ("top1", "test_nll", "chrf")} for row in rows}
    verdicts = [r["verdict"] for r in evaluate_claims(per_seed, t["claims"])]
    assert "missing" not in verdicts and "invalid" not in verdicts
    for check in t.get("checks", []):
        assert check["metric"].split("/")[0].rpartition("_")[2] in plan["patterns"]


def test_published_numbers_are_issue_25s():
    pub = read_yaml(THRESHOLDS / "methods_imagenet_proxy.yaml")["published"]
    assert pub["srste"]["top1"] == {"2:4": 77.0, "4:8": 77.4, "1:4": 75.9, "2:8": 76.4}
    assert pub["bimask"]["top1"] == {"2:4": 77.4, "1:4": 75.6, "2:8": 76.3, "4:8": 77.5, "1:16": 71.4}
    assert pub["maxq"]["top1"] == {"1:16": 74.6}
    assert all(pub[m]["source"] for m in pub) and set(NEW) <= set(pub)


# ------------------------------------------------------------------------------------------------- grid
def test_methods_come_from_the_registry_minus_the_exclusions():
    settings = read_yaml(G.SETTINGS)
    registered = ("bimask", "srste", "ste", "fixed", "dense", "asp", "decaying", "maxq", "sste", "transposable")
    for proxy in G.PROXIES:
        assert G.harness_methods(registered, settings, proxy) == ["srste", "ste", "bimask", "decaying", "maxq", "sste",
                                                                  "transposable"]
    with pytest.raises(ValueError, match=r"no settings for the registered method\(s\) \['newmethod'\]"):
        G.harness_methods(registered + ("newmethod",), settings, "imagenet_proxy")


def test_a_schedule_setting_must_be_given_for_the_proxy():
    settings = {"imagenet_proxy": {"steps": 512, "methods": {"m": {"alpha": 2.0}, "k": {"ramp_steps": 400}}}}
    with pytest.raises(ValueError, match=r"schedule setting\(s\) \['ramp_steps'\].*512 steps"):
        G.method_settings("m", settings, "imagenet_proxy", {"alpha": 1.0, "ramp_steps": 600000})
    assert G.method_settings("k", settings, "imagenet_proxy", {"ramp_steps": 600000}) == {"ramp_steps": 400}
    for key in ("refresh_every", "hard_from", "warmup_epochs"):  # schedules whose names do not say 'step'
        with pytest.raises(ValueError, match=key):
            G.method_settings("m", settings, "imagenet_proxy", {"alpha": 1.0, key: 10})
    with pytest.raises(ValueError, match=r"sets \['alpha'\], which m does not have"):
        G.method_settings("m", settings, "imagenet_proxy", {"beta": 1.0})
    overrides = G.run_overrides("imagenet_proxy", "k", "1:16", 3, {"ramp_steps": 400, "mode": "soft"}, Path("/r"), [])
    assert "sparsity.method_args.mode='soft'" in overrides and "sparsity.method_args.ramp_steps=400" in overrides
    assert "train.seed=3" in overrides and "train.out_dir=/r/k_1_16_s3" in overrides


def _cells(proxy, methods, patterns, seeds, smoke=()):
    committed = G.read_committed(proxy)
    settings = {proxy: {"methods": {m: {} for m in methods}}}
    return G.plan_runs(proxy, methods, patterns, seeds, settings, Path("/tmp/runs"), committed, list(smoke),
                       with_defaults=False)


def test_grid_reuses_committed_srste_ste_only_with_the_same_config_and_verifies_first():
    """The study's SR-STE/STE cells with the study's config are reused, SR-STE 1:16 seed 0 is re-run first to verify,
    a seed the study did not run is trained, and a different schedule (SMOKE) trains everything."""
    cells = _cells("imagenet_proxy", ["srste", "ste"], ["1:8", "1:16"], [0, 1, 10])
    by = {c["name"]: c for c in cells}
    assert cells[0]["name"] == "srste_1_16_s0" and cells[0]["action"] == "verify"
    assert by["srste_1_8_s0"]["action"] == "reuse" and by["ste_1_16_s1"]["action"] == "reuse"
    assert by["srste_1_8_s10"]["action"] == "reuse"  # the study's 1:8 extension holds seed 10
    assert by["srste_1_16_s10"]["action"] == "run" and "no committed value" in by["srste_1_16_s10"]["why"]
    smoke = _cells("imagenet_proxy", ["srste"], ["1:16"], [0, 1], ["optim.epochs=2"])
    assert [c["action"] for c in smoke] == ["run", "run"]
    assert "config differs" in smoke[0]["why"] and "optim.epochs: 2 != 4" in smoke[0]["why"]


def test_translation_grid_reuses_the_committed_proxy_rows():
    cells = _cells("translation_proxy", ["srste", "ste"], ["2:4"], [0, 1, 2])
    assert [(c["name"], c["action"]) for c in cells][:1] == [("srste_2_4_s0", "verify")]
    assert sorted(c["action"] for c in cells) == ["reuse"] * 5 + ["verify"]


def test_reuse_without_the_verification_run_is_refused():
    with pytest.raises(ValueError, match="without the verification run"):
        _cells("imagenet_proxy", ["ste"], ["1:8"], [0, 1])


def test_config_differences_ignore_where_a_run_writes():
    a = G.load_run_config("imagenet_proxy", ["name=a", "train.out_dir=/x", "train.progress=true"])
    b = G.load_run_config("imagenet_proxy", ["name=b", "train.out_dir=/y", "train.progress=false"])
    assert G.same_config(a, b)
    c = G.load_run_config("imagenet_proxy", ["sparsity.decay=0.23"])
    assert G.config_differences(a, c) == ["sparsity.decay: 0.0002 != 0.23"]


def test_verification_raises_when_the_committed_values_are_not_reproduced():
    committed = G.read_committed("imagenet_proxy")
    ref = G.committed_run(committed, "srste_1_16_s0")
    same = {k: ref[k] for k in ("name", "top1", "top5", "sad_final", "masks_sha")}
    record = G.check_reproduced("imagenet_proxy", same, committed)
    assert record["equal"] and record["fields"]["top1"] == [ref["top1"]] * 2
    with pytest.raises(RuntimeError, match=r"top1: committed .*, now .*cannot be reused"):
        G.check_reproduced("imagenet_proxy", {**same, "top1": ref["top1"] + 0.01}, committed)
    with pytest.raises(RuntimeError, match="masks_sha"):
        G.check_reproduced("imagenet_proxy", {**same, "masks_sha": "0" * 16}, committed)


# ------------------------------------------------------------------------------------------------ masks
def _transposable_2_4(out: int, inp: int) -> torch.Tensor:
    i, j = torch.arange(out)[:, None], torch.arange(inp)[None, :]
    return ((i + j) % 4 < 2)  # every 4 consecutive rows and columns keep 2


def test_mask_properties_on_real_masks():
    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3)
    p18 = mask_properties({"conv": nm_mask(w, "1:8")}, "1:8")
    assert p18["valid_nm"] and p18["valid_2_4"] is None and p18["fits_2_4"]
    assert not p18["transposable"] and p18["failing"] == {"transposable": ["conv"]}  # random weights: not transposable
    t24 = _transposable_2_4(16, 32)
    p24 = mask_properties({"fc": t24}, "2:4")
    assert p24 == {"pattern": "2:4", "layers": 1, "valid_nm": True, "valid_2_4": True, "fits_2_4": True,
                   "transposable": True, "failing": {}}
    broken = t24.clone()
    broken[0, :4] = True  # 4 of 4 kept in one group
    pb = mask_properties({"fc": t24, "bad": broken}, "2:4")
    assert not pb["valid_nm"] and pb["valid_2_4"] is False and pb["failing"]["valid_nm"] == ["bad"]
    assert not fits_2_4(broken) and fits_2_4(nm_mask(torch.randn(8, 16), "1:16"))
    with pytest.raises(ValueError, match="no N:M masks"):
        mask_properties({}, "2:4")


def test_checkpoint_masks_reads_the_layers_masks(tmp_path):
    from nm_plugins import sparsify
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    sparsify(model, "2:4", "srste", keep_classifier_dense=False)
    torch.save({"model": model.state_dict(), "epoch": 1}, tmp_path / "checkpoint.pt")
    masks = checkpoint_masks(tmp_path / "checkpoint.pt")
    assert sorted(masks) == ["0", "2"] and all(m.dtype == torch.bool for m in masks.values())
    assert mask_properties(masks, "2:4")["valid_2_4"] is True


def test_a_forward_weight_outside_its_mask_fails_valid_nm(tmp_path):
    """The masks alone can be valid while the forward weight is not N:M (here: dense, which tracks masks but
    never applies them); run_mask_properties checks the method's forward weight from the checkpoint."""
    from nm_plugins import sparsify
    from nm_plugins.methods_harness.masks import forward_outside_mask, run_mask_properties
    for method, outside in (("srste", []), ("dense", ["0", "2"])):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
        sparsify(model, "2:4", method, keep_classifier_dense=False)
        model(torch.randn(4, 16)).sum().backward()
        torch.save({"model": model.state_dict()}, tmp_path / f"{method}.pt")
        state = torch.load(tmp_path / f"{method}.pt", weights_only=False)["model"]
        assert forward_outside_mask(state, method, {}) == outside, method
        props = run_mask_properties(tmp_path, "2:4", f"{method}.pt", method)
        assert props["forward_checked"] and props["valid_nm"] is (not outside) and props["valid_2_4"] is (not outside)
        assert mask_properties(checkpoint_masks(tmp_path / f"{method}.pt"), "2:4")["valid_nm"]  # the masks alone pass


# ------------------------------------------------------------------------------------------- leaderboard
def _synthetic(n=6):
    torch.manual_seed(1)
    base = {str(s): 85.0 + float(torch.randn(())) for s in range(n)}
    per_seed = {"srste_1:16": {"top1": base, "sad": {str(s): 0.08 for s in range(n)}},
                "bimask_1:16": {"top1": {s: v + 1.0 + 0.05 * int(s) for s, v in base.items()},
                                "sad": {str(s): 0.05 + 0.001 * s for s in range(n)}},
                "maxq_1:16": {"top1": {s: v - 2.0 + 0.05 * (int(s) % 2) for s, v in base.items()}}}
    masks = {"bimask_1:16": {"runs": n, "recorded": n, "valid_nm": n, "valid_2_4": None, "fits_2_4": n, "transposable": 2},
             "srste_1:16": {"runs": n, "recorded": 1, "valid_nm": 1, "valid_2_4": None, "fits_2_4": 1, "transposable": 0}}
    bench = {"rows": {"bimask_1:16": {"ratio_vs_dense": 1.8}, "srste_1:16": {"ratio_vs_dense": 1.05}}}
    return {"per_seed": per_seed, "masks": masks, "bench": bench, "reused_seeds": {"srste_1:16": list(range(n - 1))}}


def test_leaderboard_from_synthetic_per_seed_values():
    results = _synthetic()
    tspec = read_yaml(THRESHOLDS / "methods_imagenet_proxy.yaml")
    rows = {r["row"]: r for r in leaderboard(results, tspec, [("top1", "top-1 (%)")])}
    diffs = [1.0 + 0.05 * s for s in range(6)]
    ci = t_interval(diffs)
    vs = rows["bimask_1:16"]["vs_baseline"]["top1"]
    assert math.isclose(vs["mean"], ci["mean"]) and math.isclose(vs["lo"], ci["lo"]) and math.isclose(vs["hi"], ci["hi"])
    assert rows["srste_1:16"]["vs_baseline"] is None and rows["srste_1:16"]["reused"] == 5
    assert [(c["claim"], c["verdict"]) for c in rows["bimask_1:16"]["claims"]] == [
        ("Bi-Mask not worse than SR-STE at 1:16", "holds")]
    assert [c["verdict"] for c in rows["maxq_1:16"]["claims"]] == ["contradicted"]  # 2 points worse: not "beats"
    assert rows["bimask_1:16"]["published"] == 71.4 and rows["maxq_1:16"]["published"] == 74.6
    assert rows["bimask_1:16"]["masks"] == {"valid_nm": "yes", "valid_2_4": "n/a (fits the 2:4 format: yes)",
                                            "transposable": "2 of 6 runs"}
    assert rows["srste_1:16"]["masks"]["valid_nm"] == "yes (1 of 6 runs recorded)"
    assert rows["maxq_1:16"]["masks"]["transposable"] == "not recorded" and rows["maxq_1:16"]["step_ratio"] is None
    head, body = table(list(rows.values()), [("top1", "top-1 (%)")])
    line = dict(zip(head, body[1]))
    assert line["CPU step time / dense"] == "1.80x" and line["published ResNet-50 top-1 (ImageNet)"] == "71.4"
    assert line["top-1 (%): minus srste, paired (95% CI)"] == f"+{ci['mean']:.2f} [+{ci['lo']:.2f}, +{ci['hi']:.2f}]"
    assert "holds" in line["verdicts (claims on this row)"] and dict(zip(head, body[0]))["seeds"] == "6 (5 committed)"
    assert markdown(list(rows.values()), [("top1", "top-1 (%)")]).count("\n") == 2 + len(rows)


def test_leaderboard_marks_a_nan_seed_invalid():
    results = _synthetic()
    results["per_seed"]["bimask_1:16"]["top1"]["3"] = float("nan")
    tspec = read_yaml(THRESHOLDS / "methods_imagenet_proxy.yaml")
    rows = {r["row"]: r for r in leaderboard(results, tspec, [("top1", "top-1 (%)")])}
    head, body = table(list(rows.values()), [("top1", "top-1 (%)")])
    line = dict(zip(head, body[1]))
    assert line["top-1 (%) (95% CI)"] == "invalid (NaN/inf)"
    assert rows["bimask_1:16"]["claims"][0]["verdict"] == "invalid"


# ---------------------------------------------------------------------------------------------- SMOKE
@pytest.mark.slow
def test_smoke_harness_end_to_end(tmp_path, monkeypatch):
    """SMOKE=1: SR-STE and STE on both proxies' SMOKE schedules through the resumable grid, masks checked,
    claims judged, leaderboard and step times written; a second start reuses every run."""
    from nm_plugins.methods_harness.reproduce import main
    for k, v in {"SMOKE": "1", "RUNS_DIR": str(tmp_path / "runs"), "RESULTS_DIR": str(tmp_path / "results"),
                 "PROXY_JOBS": "2"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("GRID_ONLY", raising=False)
    assert main([]) == 0
    res = json.loads((tmp_path / "results" / "methods-imagenet-proxy-smoke" / "results.json").read_text())
    assert list(res["per_seed"]) == ["srste_1:8", "srste_1:16", "ste_1:8", "ste_1:16"]
    assert all(len(v["top1"]) == 2 for v in res["per_seed"].values())
    assert all(r["masks"]["valid_nm"] and r["masks"]["fits_2_4"] for r in res["runs"])
    assert res["masks"]["srste_1:16"] == {"runs": 2, "recorded": 2, "valid_nm": 2, "valid_2_4": None, "fits_2_4": 2,
                                          "transposable": res["masks"]["srste_1:16"]["transposable"]}
    assert set(res["bench"]["rows"]) == {"dense", "srste_1:8", "srste_1:16", "ste_1:8", "ste_1:16"}
    assert res["provenance"]["command"] and res["claims"][0]["verdict"] != "missing"
    tr = json.loads((tmp_path / "results" / "methods-translation-proxy-smoke" / "results.json").read_text())
    assert list(tr["per_seed"]) == ["srste_2:4", "ste_2:4"] and tr["masks"]["srste_2:4"]["valid_2_4"] == 1
    assert "| srste | 2:4 |" in (tmp_path / "results" / "methods-translation-proxy-smoke" / "results.md").read_text()
    monkeypatch.setenv("METHODS_BENCH", "0")
    assert main([]) == 0
    again = json.loads((tmp_path / "results" / "methods-imagenet-proxy-smoke" / "results.json").read_text())
    assert all(r["reused_run"] for r in again["runs"]) and again["per_seed"] == res["per_seed"]


def test_committed_methods_results_fail_only_by_the_claims_the_readme_names():
    """The committed harness results (make reproduce-methods): the ImageNet-proxy file passes ci.check; the
    translation file fails exactly by five published claims contradicted after the Holm adjustment (README, issue 25
    section): Bi-Mask's chrF gain, MaxQ and transposable masks not worse than SR-STE. Every mask check passes."""
    from nm_plugins.runtime.config import load_yaml
    from nm_plugins.verdicts import check
    from nm_plugins.verdicts.claims import evaluate_claims, failed
    repo = Path(__file__).resolve().parents[1]
    expected = {"methods_imagenet_proxy": [], "methods_translation_proxy": sorted([
        "Bi-Mask beats SR-STE at 2:4 (chrF)", "MaxQ not worse than SR-STE at 2:4 (test NLL)",
        "MaxQ not worse than SR-STE at 2:4 (chrF)", "Transposable masks not worse than SR-STE at 2:4 (test NLL)",
        "Transposable masks not worse than SR-STE at 2:4 (chrF)"])}
    for stem, fails in expected.items():
        results = repo / "results" / stem.replace("_", "-") / "results.json"
        res = json.loads(results.read_text())
        spec = load_yaml((repo / "ci" / "thresholds" / f"{stem}.yaml").read_text())
        assert all(ok for *_, ok in check.evaluate(res["metrics"], spec["checks"])), stem
        assert sorted(r["claim"] for r in failed(evaluate_claims(res["per_seed"], spec["claims"]))) == fails, stem
        assert check.main([str(results), str(repo / "ci" / "thresholds" / f"{stem}.yaml")]) == (1 if fails else 0)
