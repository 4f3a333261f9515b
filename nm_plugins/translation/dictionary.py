"""German-English phrase and sentence pairs from Debian's ``dict-de-en`` (the TU Chemnitz dictionary in dictd
format): parse the dictionary, clean the markup, and split it deterministically into train/valid/test.

Format (``/usr/share/dictd/german-english.{index,dict.dz}``): the ``.index`` has one line per entry,
``headword<TAB>offset<TAB>length`` with offset/length in dictd's base64 (most significant digit first),
pointing into the gzip-compatible ``.dict.dz``. An entry's text is the German headword line, one indented
(one space) ``{gender}`` / ``[domain]`` line (possibly empty), and the English translation line indented by
three spaces, which dictfmt wraps onto further unindented lines.

Filter of the proxy corpus (``build_pairs``): the German side is the cleaned headword, the English side the
first ``;``-separated alternative of the cleaned translation; cleaning removes ``{...}``, ``[...]``, ``<...>``
and ``(...)`` annotations and normalises quotes and spaces. Kept: pairs whose German side has ``min_words``
to ``max_words`` words (phrases and example sentences; single words are dictionary look-ups, not
translation), whose English side has 1 to ``max_words + 4`` words, and with no ``/`` (spelled-out
alternatives such as "He / It is") or ``...`` / ``etw.``/``jdn.`` placeholders left. Exact duplicate pairs are
dropped. With ``common_words`` K, only pairs whose words (lower case) are all among the K most frequent words
of their language in the kept pairs remain (the proxy uses K = 5000: everyday phrases and example sentences
instead of rare technical terms, learnable in a few minutes of CPU training; the word counts are vocabulary
statistics over all kept pairs, no translation is seen). Split: every pair is keyed by its normalised English side (lower case, letters and digits only); a
hash of the key puts all pairs sharing an English side in one split; afterwards, valid/test pairs whose
normalised German side also occurs in train are dropped (near-duplicates across splits).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

DICT_DIR = Path("/usr/share/dictd")
DICT_NAME = "german-english"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_ANNOTATION = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>|\([^()]*\)")
_QUOTES = str.maketrans({"’": "'", "‘": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "–": "-", "\u00a0": " "})
_PLACEHOLDERS = re.compile(r"\.\.\.|…|\b(etw|jdn|jdm|jds|sb|sth)\b\.?|/", re.IGNORECASE)


@dataclass(frozen=True)
class Entry:
    """One dictionary entry: the German headword, its grammar/domain line and the English translation."""

    headword: str
    info: str
    translation: str


def b64_decode(text: str) -> int:
    """dictd's base64 number (``BOQXT``) as an int."""
    value = 0
    for ch in text:
        pos = _B64.find(ch)
        if pos < 0:
            raise ValueError(f"dict-de-en index: {text!r} is not a dictd base64 number")
        value = value * 64 + pos
    return value


def find_dictionary(root: "str | Path | None" = None) -> tuple[Path, Path]:
    """(index, dict.dz) of dict-de-en under ``root`` (default $DICT_DE_EN_DIR, else /usr/share/dictd); a clear
    error when missing."""
    root = Path(root or os.environ.get("DICT_DE_EN_DIR") or DICT_DIR)
    index, data = root / f"{DICT_NAME}.index", root / f"{DICT_NAME}.dict.dz"
    if not index.is_file() or not data.is_file():
        raise FileNotFoundError(f"dict-de-en: {index} / {data} not found; install Debian's dict-de-en "
                                f"(apt-get install dict-de-en, done by `make install`) or set DICT_DE_EN_DIR to a "
                                f"folder holding {index.name} and {data.name}")
    return index, data


def parse_entry(text: str) -> Entry | None:
    """One entry's text (headword line, indented info line, indented and wrapped translation) as an Entry;
    None for dictd's own ``00-database`` records or text without a translation line."""
    lines = text.rstrip("\n").split("\n")
    head, info, trans, part = [], [], [], "head"
    for line in lines:
        if part == "head" and line.startswith("   ") and line.strip():
            part = "trans"
        if part == "head":
            if line.startswith(" ") or line == "":
                if head:
                    info.append(line.strip())
                    continue
            head.append(line.strip())
        else:
            trans.append(line.strip())
    if not head or not trans or head[0].startswith("00-database") or head[0].startswith("00database"):
        return None
    return Entry(" ".join(head), " ".join(i for i in info if i), " ".join(trans))


def read_entries(root: "str | Path | None" = None) -> list[Entry]:
    """Every entry of the dictionary, in index order."""
    index, data = find_dictionary(root)
    with gzip.open(data, "rb") as f:
        blob = f.read()
    entries = []
    for line in index.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"dict-de-en index {index}: line {line!r} is not headword<TAB>offset<TAB>length")
        if parts[0].startswith(("00database", "00-database")):
            continue  # dictd's own records (info, url, alphabet, ...), not dictionary entries
        start, length = b64_decode(parts[1]), b64_decode(parts[2])
        entry = parse_entry(blob[start:start + length].decode("utf-8", errors="replace"))
        if entry is not None:
            entries.append(entry)
    return entries


def clean(text: str) -> str:
    """Text without dictionary annotations ({..} [..] <..> (..)), with plain quotes and single spaces."""
    text = unicodedata.normalize("NFC", text).translate(_QUOTES)
    prev = None
    while prev != text:
        prev, text = text, _ANNOTATION.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ([,.;:!?])", r"\1", text)


def first_alternative(translation: str) -> str:
    """The first ``;``-separated alternative of a cleaned translation line."""
    return next((a.strip() for a in translation.split(";") if a.strip()), "")


def normalise(text: str) -> str:
    """Duplicate key: lower case, letters and digits only, single spaces."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def to_pair(entry: Entry, min_words: int, max_words: int) -> tuple[str, str] | None:
    """(German, English) of an entry when it passes the filter of the module docstring, else None."""
    de = clean(entry.headword)
    en = first_alternative(clean(entry.translation))
    if not de or not en or _PLACEHOLDERS.search(de) or _PLACEHOLDERS.search(en):
        return None
    if any(c in de + en for c in "{}[]<>()"):
        return None
    n_de, n_en = len(de.split()), len(en.split())
    if not (min_words <= n_de <= max_words and 1 <= n_en <= max_words + 4):
        return None
    return de, en


def _bucket(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / 16 ** 12


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def build_pairs(entries: list[Entry], min_words: int = 2, max_words: int = 10, valid_fraction: float = 0.02,
                test_fraction: float = 0.02, common_words: int | None = None) -> dict:
    """{"train"|"valid"|"test": [(de, en), ...]} by the filter and split of the module docstring."""
    import collections
    splits = {"train": [], "valid": [], "test": []}
    seen, pairs = set(), []
    for entry in entries:
        pair = to_pair(entry, min_words, max_words)
        if pair is None or pair in seen:
            continue
        seen.add(pair)
        pairs.append(pair)
    if common_words:
        counts = [collections.Counter(), collections.Counter()]
        for pair in pairs:
            for side in (0, 1):
                counts[side].update(_words(pair[side]))
        keep = [{w for w, _ in c.most_common(common_words)} for c in counts]
        pairs = [p for p in pairs if all(set(_words(p[side])) <= keep[side] for side in (0, 1))]
    for pair in pairs:
        u = _bucket(normalise(pair[1]))
        split = "test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"
        splits[split].append(pair)
    train_de = {normalise(de) for de, _ in splits["train"]}
    for split in ("valid", "test"):
        splits[split] = [p for p in splits[split] if normalise(p[0]) not in train_de]
    return splits
