"""Corpora (the Debian-catalog proxy, WMT14 En-De), their encoded form, token-based batches.

WMT14 layout expected under ``WMT_ROOT`` (``data.root``), plain text, one sentence per line, line-aligned:
  training   ``train.en`` + ``train.de``; without them the concatenation of the WMT14 corpora
             ``europarl-v7.de-en.{en,de}``, ``commoncrawl.de-en.{en,de}``, ``news-commentary-v9.de-en.{en,de}``
  valid      ``newstest2013.en`` + ``newstest2013.de``
  test       ``newstest2014.en`` + ``newstest2014.de``, or the official SGML
             ``newstest2014-deen-src.{en,de}.sgm`` / ``newstest2014-deen-ref.{en,de}.sgm`` (``<seg>`` lines)
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .catalogs import build_corpus
from .model import BOS, EOS, PAD

SPLITS = ("train", "valid", "test")
WMT_TRAIN_PARTS = ("europarl-v7.de-en", "commoncrawl.de-en", "news-commentary-v9.de-en")
_SEG = re.compile(r"<seg[^>]*>(.*)</seg>", re.IGNORECASE)


def _write_lines(path: Path, lines) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line.replace("\n", " ") + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def _read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".sgm":
        return [m.group(1).strip() for m in map(_SEG.search, text.splitlines()) if m]
    return text.rstrip("\n").split("\n") if text.strip() else []


def prepare_catalog_corpus(cache_dir: "str | Path", packages_file: "str | Path", catalog_root: "str | Path",
                           min_words: int, max_words: int, fractions=(0.05, 0.08)) -> dict:
    """Write the Debian-catalog corpus (nm_plugins/translation/catalogs.py) as ``{split}.en`` / ``{split}.de`` text
    files and ``sources.json`` (per-catalog counts and versions) under ``cache_dir``, rebuilt when the
    catalogs or rules change; returns {split: {"en": path, "de": path}}."""
    import json

    from nm_plugins.runtime.config import read_yaml
    packages = read_yaml(Path(packages_file))["packages"]
    corpus = build_corpus(packages, catalog_root, min_words, max_words, fractions[0], fractions[1])
    digest = hashlib.sha256(json.dumps([[(p.en, p.de) for p in corpus["splits"][s]] for s in SPLITS]).encode())
    folder = Path(cache_dir) / f"catalogs-en-de_{digest.hexdigest()[:12]}"
    files = {s: {lang: folder / f"{s}.{lang}" for lang in ("de", "en")} for s in SPLITS}
    if not all(p.is_file() for f in files.values() for p in f.values()):
        folder.mkdir(parents=True, exist_ok=True)
        for s in SPLITS:
            _write_lines(files[s]["de"], (p.de for p in corpus["splits"][s]))
            _write_lines(files[s]["en"], (p.en for p in corpus["splits"][s]))
        (folder / "sources.json").write_text(json.dumps(corpus["sources"], indent=1))
    return files


def wmt_files(root: "str | Path", cache_dir: "str | Path") -> dict:
    """{split: {"en": path, "de": path}} of a WMT14 En-De folder in the layout of the module docstring; a
    ValueError naming the expected files when one is missing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"WMT_ROOT {root} is not a directory")
    found = sorted(p.name for p in root.iterdir())
    expected = ("train.{en,de} (or europarl-v7.de-en.{en,de}, commoncrawl.de-en.{en,de}, "
                "news-commentary-v9.de-en.{en,de}), newstest2013.{en,de}, newstest2014.{en,de} "
                "(or newstest2014-deen-src.en.sgm + newstest2014-deen-ref.de.sgm)")

    def missing(what):
        return ValueError(f"WMT_ROOT {root}: {what} not found; expected {expected}; found {found[:20]}")

    files = {}
    if all((root / f"train.{l}").is_file() for l in ("en", "de")):
        files["train"] = {l: root / f"train.{l}" for l in ("en", "de")}
    elif all((root / f"{p}.{l}").is_file() for p in WMT_TRAIN_PARTS for l in ("en", "de")):
        folder = Path(cache_dir) / ("wmt14_train_" + hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12])
        folder.mkdir(parents=True, exist_ok=True)
        files["train"] = {l: folder / f"train.{l}" for l in ("en", "de")}
        if not all(p.is_file() for p in files["train"].values()):
            for l in ("en", "de"):
                _write_lines(files["train"][l], (line for p in WMT_TRAIN_PARTS for line in _read_lines(root / f"{p}.{l}")))
    else:
        raise missing("the training text")
    if not all((root / f"newstest2013.{l}").is_file() for l in ("en", "de")):
        raise missing("newstest2013.en / newstest2013.de")
    files["valid"] = {l: root / f"newstest2013.{l}" for l in ("en", "de")}
    if all((root / f"newstest2014.{l}").is_file() for l in ("en", "de")):
        files["test"] = {l: root / f"newstest2014.{l}" for l in ("en", "de")}
    elif all((root / f).is_file() for f in ("newstest2014-deen-src.en.sgm", "newstest2014-deen-ref.de.sgm")):
        files["test"] = {"en": root / "newstest2014-deen-src.en.sgm", "de": root / "newstest2014-deen-ref.de.sgm"}
    else:
        raise missing("newstest2014")
    for split, pair in files.items():
        n = {l: len(_read_lines(p)) if split != "train" else None for l, p in pair.items()}
        if split != "train" and n["en"] != n["de"]:
            raise ValueError(f"WMT_ROOT {root}: {pair['en'].name} has {n['en']} lines but {pair['de'].name} {n['de']}")
    return files


class Packed:
    """Token-id sequences stored as one flat int32 array with offsets (WMT's 4.5M pairs as Python lists of
    ints would take gigabytes); ``packed[i]`` is sequence i as a list."""

    def __init__(self, seqs=()):
        self.flat = np.zeros(0, dtype=np.int32)
        self.offsets = np.zeros(1, dtype=np.int64)
        self.extend(seqs)

    def extend(self, seqs) -> None:
        """Append sequences."""
        seqs = list(seqs)
        if not seqs:
            return
        lens = np.fromiter((len(x) for x in seqs), dtype=np.int64, count=len(seqs))
        flat = np.fromiter((t for x in seqs for t in x), dtype=np.int32, count=int(lens.sum()))
        self.flat = np.concatenate([self.flat, flat])
        self.offsets = np.concatenate([self.offsets, self.offsets[-1] + np.cumsum(lens)])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i) -> list:
        return self.flat[self.offsets[i]:self.offsets[i + 1]].tolist()

    @property
    def lengths(self) -> np.ndarray:
        """Length of every sequence."""
        return np.diff(self.offsets)


@dataclass
class Split:
    """One encoded split: source/target token ids (without BOS/EOS; lists or :class:`Packed`) and the raw text."""

    src: object
    tgt: object
    src_text: list
    tgt_text: list

    def __len__(self):
        return len(self.src)


def _lengths(seqs) -> np.ndarray:
    return seqs.lengths if isinstance(seqs, Packed) else np.array([len(s) for s in seqs], dtype=np.int64)


def load_split(files: dict, src_lang: str, tgt_lang: str, vocab, max_len: int | None, subset: int | None,
               max_len_ratio: float | None = None, chunk: int = 200_000, keep_text: bool = True) -> Split:
    """Read and encode one split (in chunks, packed); pairs longer than ``max_len`` tokens or with a length
    ratio above ``max_len_ratio`` are dropped when ``max_len`` is set (training); ``subset`` keeps the first
    pairs. Without ``keep_text`` the raw text is not kept (training data)."""
    src_text, tgt_text = _read_lines(files[src_lang]), _read_lines(files[tgt_lang])
    if len(src_text) != len(tgt_text):
        raise ValueError(f"{files[src_lang]} has {len(src_text)} lines but {files[tgt_lang]} has {len(tgt_text)}")
    if subset:
        src_text, tgt_text = src_text[:subset], tgt_text[:subset]
    src, tgt, keep_src, keep_tgt = Packed(), Packed(), [], []
    for start in range(0, len(src_text), chunk):
        s_ids, t_ids = vocab.encode(src_text[start:start + chunk]), vocab.encode(tgt_text[start:start + chunk])
        keep = range(len(s_ids))
        if max_len:
            keep = [i for i, (s, t) in enumerate(zip(s_ids, t_ids)) if 0 < len(s) <= max_len and 0 < len(t) <= max_len
                    and (max_len_ratio is None or max(len(s), len(t)) <= max_len_ratio * min(len(s), len(t)))]
        src.extend(s_ids[i] for i in keep)
        tgt.extend(t_ids[i] for i in keep)
        if keep_text:
            keep_src += [src_text[start + i] for i in keep]
            keep_tgt += [tgt_text[start + i] for i in keep]
    if not len(src):
        raise ValueError(f"no sentence pairs left in {files[src_lang]} (max_len {max_len})")
    return Split(src, tgt, keep_src, keep_tgt)


def make_batches(split: Split, max_tokens: int, seed: int) -> list[np.ndarray]:
    """Token-based batches: pairs sorted by length (ties in a seeded random order), cut so that
    sentences x padded length (the longer of source + EOS and target + BOS) <= ``max_tokens``."""
    rng = np.random.default_rng(seed)
    lens = np.maximum(_lengths(split.src), _lengths(split.tgt)) + 1
    if lens.max() > max_tokens:
        raise ValueError(f"data.max_tokens {max_tokens} is smaller than the longest pair ({lens.max()} tokens)")
    order = np.lexsort((rng.random(len(lens)), lens))
    batches, start, longest = [], 0, 0
    for i, idx in enumerate(order):
        longest_new = max(longest, lens[idx])
        if (i - start + 1) * longest_new > max_tokens:
            batches.append(order[start:i])
            start, longest_new = i, lens[idx]
        longest = longest_new
    batches.append(order[start:])
    return batches


def epoch_order(n_batches: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This process's batch indices for ``epoch`` (a seeded shuffle; every rank gets the same count)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_batches)
    per_rank = n_batches // world
    if per_rank == 0:
        raise ValueError(f"{n_batches} batches cannot be shared by {world} processes; lower data.max_tokens")
    return perm[rank * per_rank:(rank + 1) * per_rank].tolist()


def collate(split: Split, indices, device) -> dict:
    """Padded tensors of the pairs ``indices``: src + EOS, BOS + tgt (decoder input), tgt + EOS (labels)."""
    srcs = [split.src[i] + [EOS] for i in indices]
    tins = [[BOS] + split.tgt[i] for i in indices]
    touts = [split.tgt[i] + [EOS] for i in indices]

    def pad(seqs):
        out = torch.full((len(seqs), max(map(len, seqs))), PAD, dtype=torch.long)
        for j, s in enumerate(seqs):
            out[j, :len(s)] = torch.tensor(s, dtype=torch.long)
        return out.to(device, non_blocking=True)

    return {"src": pad(srcs), "tgt_in": pad(tins), "tgt_out": pad(touts), "ntokens": sum(map(len, touts))}
