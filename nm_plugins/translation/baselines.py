"""Baselines of the translation proxy on its test set, and paired bootstrap intervals of corpus scores.

* copy: the English source unchanged as the "German" output;
* retrieval: the German of the training pair whose English overlaps most with the source: largest Jaccard
  similarity of lower-cased word sets (ties: the earlier training pair), no learning.
The bootstrap resamples test sentences (the same resample for both systems) and recomputes sacrebleu's corpus
BLEU / chrF from per-sentence statistics, so a difference's interval is paired over sentences.
"""
from __future__ import annotations

import numpy as np


def copy_source(sources: list) -> list:
    """The copy-the-source baseline: each source sentence as its own translation."""
    return list(sources)


def retrieval(sources: list, train_src: list, train_tgt: list, chunk: int = 256) -> list:
    """For each source, the target side of the training pair whose source has the largest word-set Jaccard
    similarity with it (ties: the earliest training pair)."""
    from scipy import sparse
    vocab: dict = {}

    def matrix(texts):
        rows, cols = [], []
        for i, t in enumerate(texts):
            for w in set(t.lower().split()):
                rows.append(i)
                cols.append(vocab.setdefault(w, len(vocab)))
        return rows, cols

    tr_rows, tr_cols = matrix(train_src)
    te_rows, te_cols = matrix(sources)
    shape = len(vocab)
    train = sparse.csr_matrix((np.ones(len(tr_rows), np.float32), (tr_rows, tr_cols)), shape=(len(train_src), shape))
    test = sparse.csr_matrix((np.ones(len(te_rows), np.float32), (te_rows, te_cols)), shape=(len(sources), shape))
    n_train, n_test = np.asarray(train.sum(1)).ravel(), np.asarray(test.sum(1)).ravel()
    out = []
    for start in range(0, len(sources), chunk):
        inter = (test[start:start + chunk] @ train.T).toarray()
        union = n_test[start:start + chunk, None] + n_train[None, :] - inter
        best = np.argmax(inter / np.maximum(union, 1), axis=1)  # argmax: the first maximum
        out += [train_tgt[j] for j in best]
    return out


def sentence_stats(hyps: list, refs: list) -> dict:
    """Per-sentence sufficient statistics of sacrebleu's corpus BLEU and chrF (arrays, one row per sentence)."""
    import sacrebleu
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    b = np.array([bleu._extract_corpus_statistics([h], [[r]])[0] for h, r in zip(hyps, refs)], dtype=np.float64)
    c = np.array([chrf._extract_corpus_statistics([h], [[r]])[0] for h, r in zip(hyps, refs)], dtype=np.float64)
    return {"bleu": b, "chrf": c}


def corpus_from_stats(metric: str, stats: np.ndarray) -> float:
    """Corpus BLEU or chrF of summed per-sentence statistics (sacrebleu's own formula)."""
    import sacrebleu
    m = sacrebleu.metrics.BLEU() if metric == "bleu" else sacrebleu.metrics.CHRF()
    return m._compute_score_from_stats(list(stats)).score


def paired_bootstrap(a: list, b: dict, metric: str, n: int = 1000, seed: int = 0) -> dict:
    """Corpus ``metric`` of system(s) ``a`` (a list of sentence_stats, e.g. one per seed: their mean score) and of
    system ``b`` on the same test set, the difference mean(a) - b, and its 95% percentile interval over ``n``
    resamples of the test sentences (one resample shared by every system: paired)."""
    sb = b[metric]
    if any(len(x[metric]) != len(sb) for x in a):
        raise ValueError(f"paired bootstrap: systems with {[len(x[metric]) for x in a]} vs {len(sb)} sentences")
    rng = np.random.default_rng(seed)

    def score(idx):
        return (float(np.mean([corpus_from_stats(metric, x[metric][idx].sum(0)) for x in a])),
                corpus_from_stats(metric, sb[idx].sum(0)))

    diffs = np.empty(n)
    for i in range(n):
        va, vb = score(rng.integers(0, len(sb), len(sb)))
        diffs[i] = va - vb
    va, vb = score(np.arange(len(sb)))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"a": float(va), "b": float(vb), "diff": float(va - vb), "lo": float(lo), "hi": float(hi), "resamples": n,
            "seed": seed, "systems_a": len(a)}
