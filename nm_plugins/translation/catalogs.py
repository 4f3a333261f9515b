"""English -> German sentence pairs from Debian's German gettext catalogs (the translation proxy's corpus).

Source: the pinned packages of ``configs/translation/catalogs_de.yaml``; each package's German binary catalogs
(``<catalog>.mo``) are read with polib from the installed ``/usr/share/locale/de/LC_MESSAGES/`` or, where the
package is not installed, from ``data/catalogs/<package>/`` (``make install`` fetches them there with
``apt-get download`` + ``dpkg-deb -x``, without installing the package).

Extraction rules (``clean_entry``), applied in the same order on every machine:
  * skipped: the header, untranslated entries (empty msgstr), fuzzy entries, plural entries (msgid_plural:
    skipped, not reduced to their first form), obsolete entries, context-only entries (Q_-style
    ``context|text`` msgids, a msgid without letters after cleaning);
  * placeholders become ONE token ``%s``: printf (``%s``, ``%d``, ``%1$s``, ``%-10.3lf``, ``%'d``, ``%zu``, ``%m``,
    ``%<PRIu64>``), Python (``%(name)s``), braces (``{}``, ``{0}``, ``{name}``, ``${var}``); ``%%`` becomes ``%`` (and gnupg's escaped newline ``%%0A`` a space); printf's space
    flag is not recognised, so that a literal "100% of" in a non-format message stays text;
  * markup is removed: XML/HTML tags (``<b>``, ``</span>``, ``<tt>``) and the keyboard mnemonics ``_`` / ``&``
    directly before a letter; whitespace (newlines, tabs) collapses to single spaces; Unicode NFC;
  * kept: both sides 3 to 40 words (whitespace-separated), at least half of the English words alphabetic,
    not identical to each other after normalisation (untranslated copies), same number of ``%s`` tokens on both
    sides (a translation that drops a placeholder is not a translation of the same sentence).
Deduplication and split (``build_corpus``): pairs are visited in a fixed order (package, catalog, msgid);
``norm`` (lower case, letters and digits only) of each side is its duplicate key; a pair whose English key or
German key was seen before is dropped (exact and near duplicates), so no English or German sentence occurs twice
in the corpus, hence never in two splits. The split is a SHA-256 hash of the English key: the first
``test_fraction`` of the hash range goes to test, the next ``valid_fraction`` to valid, the rest to train.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

LOCALE_DIR = Path("/usr/share/locale/de/LC_MESSAGES")
PLACEHOLDER = "%s"
_PRINTF = re.compile(r"%(?:\d+\$)?[-+#0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|Z|t)?"
                     r"(?:<PRI[a-zA-Z0-9]+>|[diouxXeEfFgGaAcsSpnm])")
_PYTHON = re.compile(r"%\([A-Za-z_][A-Za-z0-9_]*\)[-+ #0]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]")
_BRACE = re.compile(r"\$?\{[A-Za-z0-9_.:!\[\]-]*\}")
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_MNEMONIC = re.compile(r"(?<![\w%])[_&](?=\w)")
_KEY = re.compile(r"[^\w]|_", re.UNICODE)
_QTYPE = re.compile(r"^[\w .-]+\|")


@dataclass(frozen=True)
class Pair:
    """One English -> German pair and where it came from."""

    en: str
    de: str
    package: str
    catalog: str


def clean_text(text: str) -> str:
    """``text`` with placeholders as ``%s``, markup and mnemonics removed, whitespace collapsed (module docstring)."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("%%", "\x00")
    text = _PYTHON.sub("\x01", text)
    text = _PRINTF.sub("\x01", text)
    text = _BRACE.sub("\x01", text)
    text = _TAG.sub(" ", text)
    text = _MNEMONIC.sub("", text)
    text = " ".join(text.split())
    return " ".join(text.replace("\x01", PLACEHOLDER).replace("\x00", "%").replace("%0A", " ").split())


def norm(text: str) -> str:
    """The duplicate key of a sentence: lower case, letters and digits only."""
    return _KEY.sub("", text.lower())


def clean_entry(entry, min_words: int = 3, max_words: int = 40) -> "tuple[str, str] | None":
    """(English, German) of one polib entry under the extraction rules of the module docstring, or None."""
    if not entry.msgid or not entry.msgstr or entry.msgid_plural or "fuzzy" in entry.flags or entry.obsolete:
        return None
    if _QTYPE.match(entry.msgid):
        return None
    en, de = clean_text(entry.msgid), clean_text(entry.msgstr)
    if not (min_words <= len(en.split()) <= max_words and min_words <= len(de.split()) <= max_words):
        return None
    words = en.split()
    if sum(any(c.isalpha() for c in w) for w in words) * 2 < len(words):
        return None
    if norm(en) == norm(de) or not norm(en) or en.count(PLACEHOLDER) != de.count(PLACEHOLDER):
        return None
    return en, de


def read_catalog(path: "str | Path", min_words: int = 3, max_words: int = 40) -> list:
    """The kept (English, German) pairs of one ``.mo`` (or ``.po``) catalog, in msgid order."""
    import polib
    path = Path(path)
    cat = polib.pofile(str(path)) if path.suffix == ".po" else polib.mofile(str(path))
    pairs = (clean_entry(e, min_words, max_words) for e in cat)
    return sorted({p for p in pairs if p})


def package_version(package: str, catalog_root: Path) -> "str | None":
    """The Debian version of ``package``: installed (dpkg-query), else the VERSION file that make install wrote."""
    marker = catalog_root / package / "VERSION"
    if marker.is_file():
        return marker.read_text().strip()
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def find_catalog(package: str, catalog: str, catalog_root: Path) -> Path:
    """The German ``catalog``.mo of ``package``: under data/catalogs/<package>/ if make install extracted it
    there, else the installed one; FileNotFoundError naming the package otherwise."""
    fetched = sorted((catalog_root / package).glob(f"**/de/LC_MESSAGES/{catalog}.mo"))
    if fetched:
        return fetched[0]
    if (LOCALE_DIR / f"{catalog}.mo").is_file():
        return LOCALE_DIR / f"{catalog}.mo"
    raise FileNotFoundError(f"German catalog {catalog}.mo of Debian package {package} not found in {LOCALE_DIR} or "
                            f"{catalog_root / package}; run `make install` (apt-get download + dpkg-deb -x)")


def split_of(key: str, valid_fraction: float, test_fraction: float) -> str:
    """train / valid / test of a pair from a SHA-256 hash of its English duplicate key."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64
    return "test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"


def dedup_split(pairs, valid_fraction: float, test_fraction: float) -> dict:
    """{train|valid|test: [Pair]} of ``pairs`` (already in their fixed order) with exact and near duplicates
    (same ``norm`` of either side as an earlier pair) dropped, split by the hash of the English key."""
    seen_en, seen_de, out = set(), set(), {"train": [], "valid": [], "test": []}
    for p in pairs:
        ken, kde = norm(p.en), norm(p.de)
        if ken in seen_en or kde in seen_de:
            continue
        seen_en.add(ken)
        seen_de.add(kde)
        out[split_of(ken, valid_fraction, test_fraction)].append(p)
    return out


def build_corpus(packages: dict, catalog_root: "str | Path", min_words: int = 3, max_words: int = 40,
                 valid_fraction: float = 0.05, test_fraction: float = 0.08) -> dict:
    """The corpus of the pinned ``packages`` ({package: {"catalogs": [...], "version": ...}}): {"splits":
    {split: [Pair]}, "sources": [{package, version, pinned, catalog, path, pairs}]}."""
    catalog_root = Path(catalog_root)
    pairs, sources = [], []
    for package in sorted(packages):
        spec = packages[package]
        for catalog in sorted(spec["catalogs"]):
            path = find_catalog(package, catalog, catalog_root)
            found = read_catalog(path, min_words, max_words)
            pairs += [Pair(en, de, package, catalog) for en, de in found]
            sources.append({"package": package, "catalog": catalog, "pinned": str(spec.get("version")),
                            "version": package_version(package, catalog_root), "path": str(path),
                            "extracted": len(found)})
    splits = dedup_split(pairs, valid_fraction, test_fraction)
    kept = {}
    for split, items in splits.items():
        for p in items:
            kept.setdefault((p.package, p.catalog), {"train": 0, "valid": 0, "test": 0})[split] += 1
    for s in sources:
        s["kept"] = kept.get((s["package"], s["catalog"]), {"train": 0, "valid": 0, "test": 0})
    return {"splits": splits, "sources": sources}


def missing_packages(packages: dict, catalog_root: "str | Path") -> list:
    """Pinned packages with at least one German catalog neither installed nor fetched into ``catalog_root``."""
    out = []
    for package in sorted(packages):
        try:
            for catalog in packages[package]["catalogs"]:
                find_catalog(package, catalog, Path(catalog_root))
        except FileNotFoundError:
            out.append(package)
    return out


def corpus_card(corpus: dict, fractions: tuple, samples: int = 8) -> str:
    """Markdown of the corpus card (docs/translation_corpus.md): counts per package, catalog and version, the
    rules (this module's docstring), sample test pairs."""
    sizes = {s: len(v) for s, v in corpus["splits"].items()}
    lines = ["# Translation proxy corpus: English -> German sentences of Debian's German gettext catalogs", "",
             "Built at run time by `nm_plugins/translation/catalogs.py` from the pinned packages of "
             "`configs/translation/catalogs_de.yaml` (this card: `python -m nm_plugins.translation.catalogs card`); "
             "written to `data/translation/catalogs-en-de_<hash>/` (not committed).", "",
             f"**{sum(sizes.values()):,} pairs**: train {sizes['train']:,}, valid {sizes['valid']:,}, test {sizes['test']:,} "
             f"(hash split, valid {fractions[0]}, test {fractions[1]}).", "",
             "## Licence", "",
             "The catalogs are the German translations shipped in Debian main; each is distributed under its "
             "package's licence (GPL-2+/GPL-3+, LGPL-2.1+, PostgreSQL, MIT/X11, BSD-style; see "
             "`/usr/share/doc/<package>/copyright`). They are read where installed and never committed here; the corpus "
             "is a derived data set for local training and evaluation only.", "",
             "## Rules", "", "```", (__doc__ or "").strip(), "```", "",
             "## Sources", "", "| package | version read | catalog | pairs extracted | kept train | valid | test |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for src in corpus["sources"]:
        k = src["kept"]
        lines.append(f"| {src['package']} | {src['version']} | {src['catalog']} | {src['extracted']} | {k['train']} | "
                     f"{k['valid']} | {k['test']} |")
    lines += ["", "Pairs extracted: after the rules, before deduplication (duplicates are dropped in the order "
              "package, catalog, msgid).", "", "## Sample test pairs", "", "| package | English | German |",
              "| --- | --- | --- |"]
    test = corpus["splits"]["test"]
    for p in test[::max(1, len(test) // samples)][:samples]:
        en, de = (x.replace("|", "\\|") for x in (p.en, p.de))
        lines.append(f"| {p.package} | {en} | {de} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """``python -m nm_plugins.translation.catalogs missing|card``: the pinned packages make install must fetch, or
    the corpus card (markdown) of the proxy config's corpus."""
    import sys

    from nm_plugins.runtime.config import read_yaml
    args = sys.argv[1:] if argv is None else argv
    if args not in (["missing"], ["card"]):
        print("usage: python -m nm_plugins.translation.catalogs missing|card", file=sys.stderr)
        return 2
    repo = Path(__file__).resolve().parents[2]
    packages = read_yaml(repo / "configs" / "translation" / "catalogs_de.yaml")["packages"]
    if args == ["missing"]:
        print("\n".join(missing_packages(packages, repo / "data" / "catalogs")))
        return 0
    d = read_yaml(repo / "configs" / "translation" / "proxy_catalogs_en_de.yaml")["data"]
    corpus = build_corpus(packages, repo / "data" / "catalogs", d["min_words"], d["max_words"], *d["split_fractions"])
    print(corpus_card(corpus, tuple(d["split_fractions"])), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
