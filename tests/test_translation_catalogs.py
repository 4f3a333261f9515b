"""The Debian-catalog corpus: extraction rules on generated .po/.mo catalogs (plural, fuzzy, placeholders,
markup), real German catalogs of this machine, near duplicates across splits, determinism; the baselines."""
from pathlib import Path

import polib
import pytest
import sacrebleu

from nm_plugins.runtime.config import read_yaml
from nm_plugins.translation import baselines as B
from nm_plugins.translation import catalogs as C

REPO = Path(__file__).resolve().parents[1]
PACKAGES = read_yaml(REPO / "configs" / "translation" / "catalogs_de.yaml")["packages"]
CATALOG_ROOT = REPO / "data" / "catalogs"
needs_catalogs = pytest.mark.skipif(bool(C.missing_packages(PACKAGES, CATALOG_ROOT)),
                                    reason="German catalogs of the pinned packages missing (make install fetches them)")


def _catalog(tmp_path: Path, name: str) -> polib.POFile:
    po = polib.POFile()
    po.metadata = {"Content-Type": "text/plain; charset=UTF-8", "Plural-Forms": "nplurals=2; plural=(n != 1);"}
    add = lambda **kw: po.append(polib.POEntry(**kw))  # noqa: E731
    add(msgid="Could not open file %s for reading", msgstr="Konnte Datei %s nicht zum Lesen öffnen")
    add(msgid="%(count)d files were copied to {dest}", msgstr="%(count)d Dateien wurden nach {dest} kopiert")
    add(msgid="Moving %1$s to %2$s now", msgstr="Verschiebe jetzt %2$s nach %1$s")
    add(msgid="<b>Warning:</b> the _disk is almost full", msgstr="<b>Warnung:</b> die _Festplatte ist fast voll")
    add(msgid="%d file was deleted", msgid_plural="%d files were deleted",
        msgstr_plural={0: "%d Datei wurde gelöscht", 1: "%d Dateien wurden gelöscht"})
    add(msgid="This sentence is fuzzy here", msgstr="Dieser Satz ist hier unscharf", flags=["fuzzy"])
    add(msgid="This sentence is not translated", msgstr="")
    add(msgid="Stock label|Open the file", msgstr="Die Datei öffnen")
    add(msgid="Too short", msgstr="Zu kurz")
    add(msgid="Use 100%% of the available space", msgstr="Verwende 100%% des verfügbaren Platzes")
    add(msgid="Placeholder %s lost here", msgstr="Platzhalter hier verloren")
    add(msgid="Open the file in a new window", msgstr="Öffne die Datei in einem neuen Fenster", msgctxt="menu")
    po.save(str(tmp_path / f"{name}.po"))
    po.save_as_mofile(str(tmp_path / f"{name}.mo"))
    return po


def test_extraction_rules_on_generated_catalogs(tmp_path):
    _catalog(tmp_path, "demo")
    po = dict(C.read_catalog(tmp_path / "demo.po"))
    assert po == {
        "Could not open file %s for reading": "Konnte Datei %s nicht zum Lesen öffnen",
        "%s files were copied to %s": "%s Dateien wurden nach %s kopiert",  # Python and brace placeholders: one token
        "Moving %s to %s now": "Verschiebe jetzt %s nach %s",  # positional printf
        "Warning: the disk is almost full": "Warnung: die Festplatte ist fast voll",  # markup and mnemonics removed
        "Use 100% of the available space": "Verwende 100% des verfügbaren Platzes",  # %% is a literal percent
        "Open the file in a new window": "Öffne die Datei in einem neuen Fenster",  # a msgctxt entry keeps its text
    }  # skipped: plural, fuzzy, untranslated, Q_-style context-only, too short, placeholder dropped in German
    # the binary catalog gives the same pairs (gettext's .mo has no fuzzy entries; polib leaves them out)
    assert dict(C.read_catalog(tmp_path / "demo.mo")) == po


def test_clean_text_placeholders_are_one_token():
    assert C.clean_text("%-10.3lf and %'d and %zu and %<PRIu64> and %m") == "%s and %s and %s and %s and %s"
    assert C.clean_text("${HOME}/x {0} {} %(name)r") == "%s/x %s %s %s"
    assert C.clean_text("line one\n\tline  two") == "line one line two"
    assert C.clean_text("key%%0A %s%%0Aend") == "key %s end"  # gnupg's escaped newline


def test_near_duplicates_never_cross_splits():
    pairs = [C.Pair("Open the file.", "Öffne die Datei.", "a", "x"),
             C.Pair("open the FILE", "Die Datei öffnen", "b", "y"),  # same English key: dropped
             C.Pair("Close the file now", "Öffne die Datei", "b", "y"),  # same German key as the first: dropped
             C.Pair("Save the file now", "Speichere die Datei jetzt", "b", "y")]
    out = C.dedup_split(pairs, 0.3, 0.3)
    kept = sorted(p.en for s in out.values() for p in s)
    assert kept == ["Open the file.", "Save the file now"]


@needs_catalogs
def test_real_catalog_extraction():
    """A real German catalog of this machine (coreutils): placeholders normalised, word limits, counts equal."""
    path = C.find_catalog("coreutils", "coreutils", CATALOG_ROOT)
    pairs = C.read_catalog(path)
    assert len(pairs) > 500
    raw = [e for e in polib.mofile(str(path)) if e.msgid_plural]
    assert raw and not any(en == C.clean_text(e.msgid) for e in raw for en, _ in pairs)  # plural entries skipped
    for en, de in pairs:
        assert 3 <= len(en.split()) <= 40 and 3 <= len(de.split()) <= 40
        assert en.count("%s") == de.count("%s")
        assert not C._PRINTF.sub("", en.replace("%s", "")).count("%d")
        assert "\n" not in en + de and "<b>" not in en


@needs_catalogs
def test_corpus_is_deterministic_disjoint_and_large_enough():
    a = C.build_corpus(PACKAGES, CATALOG_ROOT, valid_fraction=0.04, test_fraction=0.05)
    b = C.build_corpus(PACKAGES, CATALOG_ROOT, valid_fraction=0.04, test_fraction=0.05)
    assert a == b
    sizes = {s: len(v) for s, v in a["splits"].items()}
    assert sum(sizes.values()) >= 14_000 and sizes["test"] >= 1000
    for side in ("en", "de"):
        keys = {s: [C.norm(getattr(p, side)) for p in v] for s, v in a["splits"].items()}
        every = [k for v in keys.values() for k in v]
        assert len(every) == len(set(every))  # no sentence twice, so none in two splits
    assert {s["package"] for s in a["sources"]} == set(PACKAGES)
    assert all(s["version"] for s in a["sources"])


def test_missing_catalog_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-package.*make install"):
        C.find_catalog("no-such-package", "no-such-catalog", tmp_path)
    assert C.missing_packages({"no-such-package": {"catalogs": ["no-such-catalog"]}}, tmp_path) == ["no-such-package"]


def test_retrieval_and_bootstrap():
    train_en = ["open the file", "close the window now", "delete all files"]
    train_de = ["öffne die Datei", "schließe jetzt das Fenster", "lösche alle Dateien"]
    assert B.retrieval(["please close the window", "delete the files"], train_en, train_de) == [train_de[1], train_de[2]]
    hyps, refs = ["das ist ein Test", "ein anderer Satz hier", "noch einer"], ["das ist ein Test", "ein Satz hier", "und noch einer"]
    stats = B.sentence_stats(hyps, refs)
    for metric, score in (("bleu", sacrebleu.corpus_bleu(hyps, [refs]).score), ("chrf", sacrebleu.corpus_chrf(hyps, [refs]).score)):
        assert B.corpus_from_stats(metric, stats[metric].sum(0)) == pytest.approx(score)
    copy = B.sentence_stats(B.copy_source(["this is a test", "another sentence here", "one more"]), refs)
    out = B.paired_bootstrap([stats], copy, "chrf", n=200)
    assert out["lo"] <= out["diff"] <= out["hi"] and out["diff"] > 0


def test_hypotheses_files_are_byte_stable(tmp_path):
    from nm_plugins.translation.proxy_results import read_gz_lines, write_gz_lines
    lines = ["Öffne die Datei %s", "zweite\nZeile"]
    write_gz_lines(tmp_path / "a.txt.gz", lines)
    write_gz_lines(tmp_path / "b.txt.gz", lines)
    assert (tmp_path / "a.txt.gz").read_bytes() == (tmp_path / "b.txt.gz").read_bytes()
    assert read_gz_lines(tmp_path / "a.txt.gz") == ["Öffne die Datei %s", "zweite Zeile"]

