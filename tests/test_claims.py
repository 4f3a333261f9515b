"""Paired claim statistics (nm_plugins/verdicts/claims.py) on known numbers; the verdicts, power and Holm
adjustment are in tests/test_claim_rules.py."""
import json

import pytest
import yaml

from nm_plugins.verdicts import check, claims

SE = {"smallest_effect": 0.1, "smallest_effect_source": "test"}


def test_t_quantiles_and_interval_on_known_numbers():
    # Student t 97.5% quantiles from the standard tables
    assert claims.t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert claims.t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert claims.t_quantile(0.975, 9) == pytest.approx(2.2622, abs=1e-4)
    r = claims.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, sd sqrt(2.5)
    assert r["n"] == 5 and r["mean"] == pytest.approx(3.0) and r["sd"] == pytest.approx(2.5 ** 0.5)
    assert (r["lo"], r["hi"]) == pytest.approx((3.0 - 1.963243, 3.0 + 1.963243), abs=1e-5)
    one = claims.t_interval([0.7])
    assert one["lo"] is None and one["hi"] is None and one["mean"] == 0.7


def test_pairing_by_seed_sees_what_separate_means_cannot():
    # B varies a lot between seeds, A is B + 0.2 (+- 0.02) on every seed: unpaired means overlap, paired holds.
    b = {"0": 80.0, "1": 85.0, "2": 78.0, "3": 88.0, "4": 82.0}
    a = {s: v + 0.2 + (0.02 if int(s) % 2 else -0.02) for s, v in b.items()}
    per_seed = {"A": {"top1": {**a, "9": 10.0}}, "B": {"top1": b}}  # seed 9 has no partner: left out
    row = claims.evaluate_claim(per_seed, {"a": "A", "b": "B", "metric": "top1", "kind": "greater", **SE})
    assert row["n"] == 5 and row["seeds"] == ["0", "1", "2", "3", "4"]
    assert row["mean"] == pytest.approx(0.196) and row["verdict"] == "holds"
    missing = claims.evaluate_claim(per_seed, {"a": "A", "b": "C", "metric": "top1", "kind": "greater", **SE})
    assert missing["verdict"] == "missing" and "C/top1" in missing["note"]


def test_reproduce_per_seed_values_feed_the_claims(tmp_path):
    from nm_plugins.train import reproduce
    summaries = [{"method": m, "pattern": "2:4", "seed": s, "top1": t + s, "top5": 99.0, "sad_final": sad}
                 for s in range(3) for m, t, sad in (("srste", 87.0, 0.1), ("ste", 86.0, 0.2))]
    per_seed = reproduce.per_seed_values(summaries)
    assert per_seed["srste_2:4"]["top1"] == {"0": 87.0, "1": 88.0, "2": 89.0}
    spec = tmp_path / "t.yaml"
    spec.write_text(yaml.safe_dump({"claims": [
        {"a": "srste_2:4", "b": "ste_2:4", "metric": "top1", "kind": "greater", **SE},
        {"a": "srste_2:4", "b": "ste_2:4", "metric": "sad", "kind": "less", **SE}]}))
    rows = reproduce.claim_rows(per_seed, spec)
    # constant paired differences: zero spread, the interval is the point itself
    assert [r["verdict"] for r in rows] == ["holds", "holds"] and rows[0]["lo"] == pytest.approx(1.0)
    (tmp_path / "results.md").write_text("# x\n")
    plots = reproduce.write_claims(rows, tmp_path)
    assert plots[0].is_file() and "**holds**" in (tmp_path / "results.md").read_text()


def test_committed_imagenet_proxy_results_pass_their_claims_and_floors(capsys):
    """The committed proxy figures carry per-seed values for every claim and contradict none of them."""
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    results = repo / "results" / "imagenet-proxy" / "results.json"
    spec = yaml.safe_load((repo / "ci" / "thresholds" / "imagenet_proxy.yaml").read_text())
    per_seed = json.loads(results.read_text())["per_seed"]
    for claim in spec["claims"]:
        assert len(per_seed[claim["a"]][claim["metric"]]) >= 5 and len(per_seed[claim["b"]][claim["metric"]]) >= 5
    assert check.main([str(results), str(repo / "ci" / "thresholds" / "imagenet_proxy.yaml")]) == 0
    out = capsys.readouterr().out.split("Paper claims")[1]
    assert "contradicted" not in out and "FAIL" not in out
