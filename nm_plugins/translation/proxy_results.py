"""The proxy's results beyond the per-run scores: the copy and retrieval baselines on the same test set, the
paired bootstrap of dense vs retrieval, compressed hypotheses of every run, sample translations and corpus counts."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from .baselines import copy_source, paired_bootstrap, retrieval, sentence_stats
from .metrics import translation_scores

BOOTSTRAP_RESAMPLES = 1000
SAMPLES = 6


def write_gz_lines(path: Path, lines) -> None:
    """``lines`` one per line into a gzip file with a fixed header time (the same text gives the same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write("".join(line.replace("\n", " ") + "\n" for line in lines).encode("utf-8"))


def read_gz_lines(path: Path) -> list:
    """The lines of a gzip text file written by write_gz_lines."""
    return gzip.decompress(Path(path).read_bytes()).decode("utf-8").rstrip("\n").split("\n")


def read_run_hypotheses(out_dir: "str | Path") -> list:
    """(source, reference, hypothesis) of every test sentence of one run (its translations.tsv.gz)."""
    return [tuple(line.split("\t")) for line in read_gz_lines(Path(out_dir) / "translations.tsv.gz")]


def baselines_and_intervals(summaries: list, cfg: dict, results_dir: Path, row_key) -> dict:
    """Baselines, dense-vs-retrieval bootstrap, stored hypotheses (results_dir/hypotheses/), samples, corpus
    counts; ``metrics_extra`` are the flat metrics ci.check reads (baseline scores, interval bounds)."""
    from .train import REPO, prepare_catalog_corpus
    d = cfg["data"]
    files = prepare_catalog_corpus(REPO / d["cache_dir"], REPO / d["packages"], REPO / d["catalog_root"],
                                   d["min_words"], d["max_words"], fractions=d["split_fractions"])
    text = {s: {l: Path(p).read_text(encoding="utf-8").rstrip("\n").split("\n") for l, p in f.items()} for s, f in files.items()}
    n = d["test_subset"] or len(text["test"][d["src"]])  # the runs decode the first test_subset pairs (SMOKE)
    src, ref = text["test"][d["src"]][:n], text["test"][d["tgt"]][:n]
    hyps = {"copy": copy_source(src), "retrieval": retrieval(src, text["train"][d["src"]], text["train"][d["tgt"]])}
    baselines = {}
    for name, h in hyps.items():
        sc = translation_scores(h, ref)
        baselines[name] = {k: sc[k] for k in ("bleu", "chrf", "bleu_tok", "bleu_bp")}
    hyp_dir = results_dir / "hypotheses"
    write_gz_lines(hyp_dir / "test.src-ref.tsv.gz", (f"{s}\t{r}" for s, r in zip(src, ref)))
    for name, h in hyps.items():
        if name != "copy":  # copy = the source column of test.src-ref.tsv.gz
            write_gz_lines(hyp_dir / f"{name}.txt.gz", h)
    run_hyps, dense_stats = {}, []
    for s in summaries:
        rows = read_run_hypotheses(s["out_dir"])
        if [r[1] for r in rows] != ref:
            raise ValueError(f"{s['out_dir']}: its test references differ from the corpus test split; rebuild the run")
        run_hyps[s["name"]] = [r[2] for r in rows]
        write_gz_lines(hyp_dir / f"{s['name']}.txt.gz", run_hyps[s["name"]])
        if row_key(s) == "dense":
            dense_stats.append(sentence_stats(run_hyps[s["name"]], ref))
    retr_stats = sentence_stats(hyps["retrieval"], ref)
    versus = {m: paired_bootstrap(dense_stats, retr_stats, m, BOOTSTRAP_RESAMPLES) for m in ("bleu", "chrf")} \
        if dense_stats else {}
    first = {}
    for s in summaries:
        first.setdefault(row_key(s), s["name"])
    step = max(1, len(src) // SAMPLES)
    samples = [{"src": src[i], "ref": ref[i], "copy": src[i], "retrieval": hyps["retrieval"][i],
                **{key: run_hyps[name][i] for key, name in first.items()}} for i in range(0, len(src), step)][:SAMPLES]
    sources = json.loads((Path(files["train"]["en"]).parent / "sources.json").read_text())
    corpus = {"splits": {s: len(text[s][d["src"]]) for s in text}, "folder": str(Path(files["train"]["en"]).parent.name),
              "sources": sources}
    metrics = {f"{name}/{m}": v[m] for name, v in baselines.items() for m in ("bleu", "chrf")}
    for m, v in versus.items():
        metrics.update({f"dense_vs_retrieval/{m}_diff": v["diff"], f"dense_vs_retrieval/{m}_lo": v["lo"],
                        f"dense_vs_retrieval/{m}_hi": v["hi"]})
    metrics["corpus/test_pairs"] = corpus["splits"]["test"]
    metrics["corpus/pairs"] = sum(corpus["splits"].values())
    return {"baselines": baselines, "dense_vs_retrieval": versus, "samples": samples, "corpus": corpus,
            "hypotheses_dir": str(hyp_dir), "metrics_extra": metrics}
