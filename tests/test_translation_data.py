"""The WMT14 layout reader and token batches (the Debian-catalog corpus: tests/test_translation_catalogs.py)."""
from pathlib import Path

import numpy as np
import pytest

from nm_plugins.translation.data import Split, epoch_order, make_batches, wmt_files


def write_wmt(root: Path, n_train=60, sgm=False, parts=False):
    """A tiny corpus in the WMT14 En-De layout (module docstring of nm_plugins/translation/data.py)."""
    root.mkdir(parents=True, exist_ok=True)
    words = {"the house": "das Haus", "a small cat": "eine kleine Katze", "the green tree": "der grüne Baum",
             "my old car": "mein altes Auto", "a big dog": "ein großer Hund", "the red book": "das rote Buch"}
    pairs = [(f"{en} number {i % 7}", f"{de} Nummer {i % 7}") for i, (en, de) in
             enumerate(list(words.items()) * (n_train // len(words) + 1))][:n_train]
    if parts:
        third = n_train // 3
        for k, name in enumerate(("europarl-v7.de-en", "commoncrawl.de-en", "news-commentary-v9.de-en")):
            chunk = pairs[k * third:(k + 1) * third]
            (root / f"{name}.en").write_text("".join(e + "\n" for e, _ in chunk))
            (root / f"{name}.de").write_text("".join(d + "\n" for _, d in chunk))
    else:
        (root / "train.en").write_text("".join(e + "\n" for e, _ in pairs))
        (root / "train.de").write_text("".join(d + "\n" for _, d in pairs))
    for name, chunk in (("newstest2013", pairs[:8]), ("newstest2014", pairs[8:20])):
        if name == "newstest2014" and sgm:
            for lang, side, kind in (("en", 0, "src"), ("de", 1, "ref")):
                segs = "".join(f'<seg id="{i + 1}">{p[side]}</seg>\n' for i, p in enumerate(chunk))
                (root / f"newstest2014-deen-{kind}.{lang}.sgm").write_text(f'<srcset setid="newstest2014">\n<doc>\n{segs}</doc>\n</srcset>\n')
        else:
            (root / f"{name}.en").write_text("".join(e + "\n" for e, _ in chunk))
            (root / f"{name}.de").write_text("".join(d + "\n" for _, d in chunk))
    return root


def test_wmt_layout_plain_sgm_and_parts(tmp_path):
    files = wmt_files(write_wmt(tmp_path / "plain"), tmp_path / "cache")
    assert files["train"]["en"] == tmp_path / "plain" / "train.en" and files["test"]["de"].name == "newstest2014.de"
    files = wmt_files(write_wmt(tmp_path / "sgm", sgm=True, parts=True), tmp_path / "cache")
    assert files["test"]["en"].name == "newstest2014-deen-src.en.sgm"
    from nm_plugins.translation.data import _read_lines
    assert _read_lines(files["test"]["en"])[0] == "the house number 1"[:0] + _read_lines(tmp_path / "plain" / "newstest2014.en")[0]
    assert len(_read_lines(files["train"]["de"])) == 60  # the three corpora concatenated


def test_wmt_layout_errors_name_the_files(tmp_path):
    root = write_wmt(tmp_path / "w")
    (root / "newstest2013.de").unlink()
    with pytest.raises(ValueError, match="newstest2013.en / newstest2013.de not found; expected train.{en,de}"):
        wmt_files(root, tmp_path / "cache")
    root = write_wmt(tmp_path / "w2")
    (root / "newstest2014.de").write_text("eins\n")
    with pytest.raises(ValueError, match="newstest2014.en has 12 lines but newstest2014.de 1"):
        wmt_files(root, tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        wmt_files(tmp_path / "nowhere", tmp_path / "cache")


def test_token_batches_cover_everything_once():
    rng = np.random.default_rng(0)
    src = [[5] * int(n) for n in rng.integers(1, 30, 500)]
    tgt = [[6] * int(n) for n in rng.integers(1, 30, 500)]
    split = Split(src, tgt, [""] * 500, [""] * 500)
    batches = make_batches(split, 200, seed=3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for b in batches:
        assert len(b) * max(max(len(src[i]), len(tgt[i])) + 1 for i in b) <= 200
    assert [b.tolist() for b in make_batches(split, 200, seed=3)] == [b.tolist() for b in batches]
    a0, a1 = epoch_order(len(batches), 0, 0, 0, 2), epoch_order(len(batches), 0, 0, 1, 2)
    assert len(a0) == len(a1) and not set(a0) & set(a1)
    assert epoch_order(len(batches), 0, 1) != epoch_order(len(batches), 0, 0)
    with pytest.raises(ValueError, match="data.max_tokens 20"):
        make_batches(split, 20, seed=0)


def test_packed_sequences_and_encoded_split(tmp_path):
    from nm_plugins.translation.data import Packed, load_split
    p = Packed([[5, 6, 7], [8], [9, 10]])
    p.extend([[11, 12]])
    assert len(p) == 4 and p[0] == [5, 6, 7] and p[1] == [8] and p[3] == [11, 12]
    assert p.lengths.tolist() == [3, 1, 2, 2]

    class WordVocab:  # one id per character: enough to check filtering and packing
        def encode(self, texts):
            return [[4 + ord(c) % 50 for c in t.replace(" ", "")] for t in texts]

    root = write_wmt(tmp_path / "w")
    files = wmt_files(root, tmp_path / "cache")
    full = load_split(files["valid"], "en", "de", WordVocab(), None, None)
    assert len(full) == 8 and full.src_text[0] == (root / "newstest2013.en").read_text().splitlines()[0]
    short = load_split(files["train"], "en", "de", WordVocab(), 16, None, chunk=7, keep_text=False)
    assert 0 < len(short) < 60 and max(short.src.lengths) <= 16 and short.src_text == []
    ratio = load_split(files["train"], "en", "de", WordVocab(), 100, 30, max_len_ratio=1.0)
    assert all(len(s) == len(t) for s, t in zip((ratio.src[i] for i in range(len(ratio))),
                                                 (ratio.tgt[i] for i in range(len(ratio)))))
