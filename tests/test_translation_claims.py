"""The translation reproductions judge the paper's claims on paired per-seed values (ci/claims.py), never by a
tolerance: per-seed values in results.json, a contradicted claim fails ci.check, the committed proxy carries them."""
import json
from pathlib import Path

import pytest
import yaml

from nm_plugins.runtime.config import load_yaml
from nm_plugins.verdicts import check
from nm_plugins.verdicts.claims import evaluate_claims, failed
from nm_plugins.translation.reproduce import aggregate

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = REPO / "ci" / "thresholds"


def _summaries(bleu: dict, seeds=(0, 1, 2), dense_params=2_000_000, nm=917_504) -> list:
    """Run summaries as the trainer writes them; ``bleu``: {row: BLEU at seed 0} (+0.1 per seed)."""
    out = []
    for seed in seeds:
        for row, b in bleu.items():
            method, pattern = ("dense", "2:4") if row == "dense" else row.split("_")
            kept = dense_params if method == "dense" else dense_params - nm // 2
            out.append({"method": method, "pattern": pattern, "seed": seed, "bleu": b + 0.1 * seed,
                        "bleu_tok": b + 0.2 + 0.1 * seed, "chrf": b + 0.1 * seed, "valid_loss": 4.0, "test_nll": 4.0,
                        "sad_final": 0.3 if method == "ste" else 0.2, "params": kept,
                        "flops": 50e6 if method == "dense" else 40.825e6, "flops_output_projection": 1.0,
                        "params_embedding": 1, "seconds": 1.0, "masks_sha": "x", "signatures": {}})
    return out


def test_aggregate_writes_per_seed_values_of_every_claim_metric():
    res = aggregate(_summaries({"dense": 2.0, "srste_2:4": 2.5, "ste_2:4": 2.0, "srste_4:8": 3.0}), "t", {})
    assert set(res["per_seed"]) == {"dense", "srste_2:4", "ste_2:4", "srste_4:8"}
    assert res["per_seed"]["srste_2:4"]["bleu"] == {"0": 2.5, "1": pytest.approx(2.6), "2": pytest.approx(2.7)}
    assert set(res["per_seed"]["dense"]) == {"bleu", "bleu_tok", "chrf", "valid_loss", "sad", "test_nll"}


@pytest.mark.parametrize("name", ["translation_proxy", "translation"])
def test_sr_ste_below_ste_on_every_seed_fails_where_the_old_tolerance_passed(tmp_path, name, capsys):
    """SR-STE 0.5 BLEU (and chrF) below STE on every seed: the old "SR-STE >= STE within 1.0 (0.3)" check passed it; the claim
    is contradicted now and ci.check fails."""
    res = aggregate(_summaries({"dense": 30.0, "srste_2:4": 29.5, "ste_2:4": 30.0, "srste_4:8": 30.0}), "t", {})
    spec = yaml.safe_load((THRESHOLDS / f"{name}.yaml").read_text())
    verdicts = {r["claim"]: r["verdict"] for r in evaluate_claims(res["per_seed"], spec.get("claims", []))}
    assert verdicts.get("SR-STE beats STE at 2:4 (chrF)" if name == "translation_proxy"
                        else "SR-STE beats STE at 2:4 (tokenized BLEU)") == "contradicted"
    (tmp_path / "r.json").write_text(json.dumps(res))
    assert check.main([str(tmp_path / "r.json"), str(THRESHOLDS / f"{name}.yaml")]) == 1
    assert "contradicted" in capsys.readouterr().out
    baselines = ("copy/", "retrieval/")  # a model against a baseline's fixed score is a floor, not a row comparison
    assert not any(("ge" in c or "le" in c) and not str(c.get("ge", c.get("le"))).startswith(baselines)
                   for c in spec["checks"] if "bleu" in c["metric"] or "chrf" in c["metric"])


def test_committed_translation_proxy_has_paired_seeds_and_claims(capsys):
    results = REPO / "results" / "translation-proxy" / "results.json"
    res = json.loads(results.read_text())
    spec = load_yaml((THRESHOLDS / "translation_proxy.yaml").read_text())
    for claim in spec["claims"]:
        assert len(res["per_seed"][claim["a"]][claim["metric"]]) >= 5
    assert [r["claim"] for r in res["claims"]] == [c["claim"] for c in spec["claims"]]
    # The committed run fails exactly its two pre-registered "dense beats retrieval" checks (README, translation
    # section): the proxy's dense model does not beat retrieval at this schedule. Every other check and claim passes.
    rows = check.evaluate(res["metrics"], spec["checks"])
    assert sorted(d for d, _, _, ok in rows if not ok) == sorted(
        c["claim"] for c in spec["checks"] if c["metric"].startswith("dense_vs_retrieval/"))
    assert failed(evaluate_claims(res["per_seed"], spec["claims"])) == []
    assert check.main([str(results), str(THRESHOLDS / "translation_proxy.yaml")]) == 1
