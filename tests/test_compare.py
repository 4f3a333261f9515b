"""The throughput CI's regression logic (benchmarks.compare) on stored JSON pairs: ratios, not times, are
compared; a ratio worse than the baseline by more than its margin fails, in either direction of 'better';
a ratio that disappeared fails; runs of different GPU kinds are refused; --accept writes a usable baseline."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from benchmarks import compare

DATA = Path(__file__).resolve().parent / "data" / "compare"
REPO = Path(__file__).resolve().parents[1]


def run(capsys, *args):
    rc = compare.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out + out.err


def verdicts(current, baseline):
    cur, _ = compare.load_ratios(DATA / current)
    base, _ = compare.load_ratios(DATA / baseline)
    return {row[0]: row[5] for row in compare.compare(cur, base)}


def test_within_margin_passes_although_every_absolute_time_changed(capsys):
    rc, out = run(capsys, DATA / "h100_within_margin.json", DATA / "h100_baseline.json")
    assert rc == 0, out
    v = verdicts("h100_within_margin.json", "h100_baseline.json")
    assert set(v.values()) == {"ok"}
    assert not any(name.endswith("_ms") or "equals_reference" in name for name in v)  # times and flags not compared


def test_srste_step_ratio_regressed_fails_even_with_a_faster_dense_step(capsys):
    rc, out = run(capsys, DATA / "h100_srste_regressed.json", DATA / "h100_baseline.json")
    assert rc == 1
    line = next(x for x in out.splitlines() if x.startswith("train/resnet50/srste_over_dense"))
    assert "REGRESSED" in line and "+5.2" in line  # 1.0667 / 1.014: 5.2% worse than the 3% margin allows
    assert verdicts("h100_srste_regressed.json", "h100_baseline.json")["train/resnet50/ste_over_dense"] == "ok"
    # a noisy runner can widen every margin explicitly
    assert run(capsys, DATA / "h100_srste_regressed.json", DATA / "h100_baseline.json", "--margin-scale", "2")[0] == 0


def test_lower_speedup_regresses_and_a_vanished_ratio_fails_unless_allowed(capsys):
    v = verdicts("h100_gemm_regressed_vit_missing.json", "h100_baseline.json")
    assert v["gemm/best_speedup"] == "REGRESSED"  # higher is better: 1.63 -> 1.50 is 8.7% worse
    assert v["train/vit_base_patch16_224/srste_over_dense"] == "MISSING"
    assert v["raft/srste_over_dense"] == "new"
    assert v["infer/best_fast_speedup_vit"] == "ok"
    rc, out = run(capsys, DATA / "h100_gemm_regressed_vit_missing.json", DATA / "h100_baseline.json")
    assert rc == 1 and "MISSING" in out
    # an improvement is never a regression, however large
    cur = {"gemm/best_speedup": 3.0, "train/resnet50/srste_over_dense": 0.5}
    assert {r[5] for r in compare.compare(cur, {"gemm/best_speedup": 1.6, "train/resnet50/srste_over_dense": 1.2})} == {"ok"}


def test_missing_allowed_still_fails_on_the_regression(capsys, tmp_path):
    rc, _ = run(capsys, DATA / "h100_gemm_regressed_vit_missing.json", DATA / "h100_baseline.json", "--allow-missing")
    assert rc == 1  # gemm still regressed
    cur = json.loads((DATA / "h100_baseline.json").read_text())
    del cur["metrics"]["train/vit_base_patch16_224/srste_over_dense"]
    (tmp_path / "cur.json").write_text(json.dumps(cur))
    assert run(capsys, tmp_path / "cur.json", DATA / "h100_baseline.json")[0] == 1
    assert run(capsys, tmp_path / "cur.json", DATA / "h100_baseline.json", "--allow-missing")[0] == 0


def test_different_gpu_kinds_are_refused_and_bad_files_named(capsys, tmp_path):
    rc, out = run(capsys, DATA / "a100_run.json", DATA / "h100_baseline.json")
    assert rc == 2 and "'a100'" in out and "'h100'" in out
    rc, out = run(capsys, DATA / "bench_baseline.json", DATA / "h100_baseline.json")
    assert rc == 2 and "'cpu'" in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"something": 1}')
    rc, out = run(capsys, bad, DATA / "h100_baseline.json")
    assert rc == 2 and "bad.json" in out and "metrics" in out
    rc, out = run(capsys, tmp_path / "nope.json", DATA / "h100_baseline.json")
    assert rc == 2 and "nope.json does not exist" in out


def test_pytest_benchmark_json_pair_compares_the_interleaved_ratio(capsys):
    v = verdicts("bench_srste_regressed.json", "bench_baseline.json")
    assert v == {"bench/srste_over_dense": "REGRESSED", "bench/ste_over_dense": "ok", "bench/argsort_over_nm_mask": "ok"}
    assert run(capsys, DATA / "bench_baseline.json", DATA / "bench_baseline.json")[0] == 0


def test_accept_then_compare_and_first_run_without_baseline(capsys, tmp_path):
    base = tmp_path / "ci" / "baselines" / "h100" / "throughput.json"
    rc, out = run(capsys, DATA / "h100_baseline.json", base)
    assert rc == 0 and "no baseline" in out and "--accept" in out
    assert run(capsys, DATA / "h100_baseline.json", base, "--accept")[0] == 0
    written = json.loads(base.read_text())
    assert written["gpu"] == "h100" and "train/resnet50/dense_ms" not in written["metrics"]
    assert run(capsys, DATA / "h100_within_margin.json", base)[0] == 0
    assert run(capsys, DATA / "h100_srste_regressed.json", base)[0] == 1
    copy = tmp_path / "x.json"
    shutil.copy(DATA / "a100_run.json", copy)
    assert run(capsys, copy, base)[0] == 2  # an accepted baseline keeps its GPU kind


@pytest.mark.parametrize("path", sorted((REPO / "ci" / "baselines").glob("*/*.json")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_baselines_load_and_name_their_gpu(path):
    ratios, data = compare.load_ratios(path)
    assert ratios and compare.gpu_of(data) == path.parent.name


def test_workflow_runs_the_targets_checks_and_comparison():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "gpu-throughput.yml").read_text())
    job = next(iter(wf["jobs"].values()))
    assert job["runs-on"] == ["self-hosted", "gpu"]
    text = "\n".join(str(s.get("run", "")) + str(s.get("uses", "")) for s in job["steps"])
    for needle in ("make install", "make throughput", "make gpu-smoke", "ci.check", "benchmarks.compare",
                   "ci/baselines/", "actions/upload-artifact"):
        assert needle in text, needle


def test_gpu_smoke_ratios_are_compared_and_its_absolute_figures_are_not():
    from benchmarks import gpu_smoke
    r = {"srste_over_dense": 1.02, "loader": {"gpu": {"images_per_s": 900.0}},
         **{m: {"images_per_s": 10.0, "peak_mem_gib": 3.0, "loss_first": 2.0, "loss_last": 1.0, "loss_finite": True,
                "loss_fell": True, "masks_valid": True, "sparse_layers": 5} for m in gpu_smoke.METHODS}}
    metrics = gpu_smoke.flatten({"world_size": 1, "trainers": {t: r for t in gpu_smoke.TRAINERS}})
    compared = {k for k in metrics if compare.rule_for(k)}
    assert compared == {f"{t}/srste_over_dense" for t in gpu_smoke.TRAINERS}
    assert compare.rule_for("raft/srste_over_dense") == ("lower", 3.0)
