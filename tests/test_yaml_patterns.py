"""N:M patterns survive YAML: ``2:4`` in a config file or a ``key=value`` override stays the string "2:4"
(YAML 1.1's safe_load reads it as the base-60 number 124) for every trainer's config reader."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nm_plugins.core import NMPattern
from nm_plugins.raft.train import load_config as raft_config
from nm_plugins.runtime.config import load_yaml
from nm_plugins.train.config import load_config as classify_config
from nm_plugins.translation.config import load_config as translation_config

REPO = Path(__file__).resolve().parents[1]
PROXY = REPO / "configs" / "imagenet_proxy" / "fashion_mnist.yaml"
PATTERNS = ["2:4", "4:8", "1:16", "1:4", "2:8", "1:8"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_overrides_keep_patterns(pattern):
    assert classify_config(PROXY, [f"sparsity.pattern={pattern}"])["sparsity"]["pattern"] == pattern
    assert raft_config(REPO / "configs" / "raft" / "proxy.yaml", [f"model.pattern={pattern}"])["model"]["pattern"] == pattern
    wmt = REPO / "configs" / "translation" / "wmt14_en_de_srste_2_4.yaml"
    assert translation_config(wmt, [f"sparsity.pattern={pattern}"])["sparsity"]["pattern"] == pattern
    NMPattern.parse(pattern)


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:16"])
def test_unquoted_patterns_in_config_files(tmp_path, pattern):
    classify = tmp_path / "classify.yaml"
    classify.write_text(f"base: {PROXY}\nsparsity: {{method: srste, pattern: {pattern}}}\n")
    assert classify_config(classify)["sparsity"]["pattern"] == pattern
    raft = tmp_path / "raft.yaml"
    raft.write_text((REPO / "configs" / "raft" / "proxy.yaml").read_text().replace('pattern: "2:4"', f"pattern: {pattern}"))
    assert f"pattern: {pattern}," in raft.read_text()
    assert raft_config(raft)["model"]["pattern"] == pattern
    translation = tmp_path / "translation.yaml"
    translation.write_text(f"base: {REPO / 'configs' / 'translation' / 'wmt14_en_de_srste_2_4.yaml'}\n"
                           f"sparsity:\n  pattern: {pattern}\n")
    assert translation_config(translation)["sparsity"]["pattern"] == pattern


def test_the_reader_keeps_yaml_numbers_and_other_types():
    """YAML 1.1's safe types, less base-60 numbers (3e-3 without a dot stays a string, as with safe_load)."""
    data = load_yaml("a: 12\nb: -3\nc: 0x1f\nd: 1.5e-3\ne: 2.0e-4\nf: .5\ng: true\nh: ~\ni: 1:30.5\nj: '2:4'\nk: [1, 2:4]\nl: 3e-3")
    assert data == {"a": 12, "b": -3, "c": 31, "d": 0.0015, "e": 2.0e-4, "f": 0.5, "g": True, "h": None,
                    "i": "1:30.5", "j": "2:4", "k": [1, "2:4"], "l": "3e-3"}
    with pytest.raises(Exception, match="could not determine a constructor"):
        load_yaml("!!python/object:os.system x")  # still a safe loader


@pytest.mark.parametrize("number,text", [(124, "2:4"), (248, "4:8"), (76, "1:16"), (64, "1:4")])
def test_pattern_from_a_yaml_1_1_reader_names_the_cause(number, text):
    import yaml
    assert yaml.safe_load(f"p: {text}")["p"] == number  # what a user's own YAML reader does
    with pytest.raises(ValueError, match=f"base-60 number {number}; quote it \\('{text}'\\)"):
        NMPattern.parse(number)


@pytest.mark.slow
def test_command_line_override_trains_a_2_4_model(tmp_path):
    """The issue's command: ``sparsity.pattern=2:4`` unquoted on the command line trains a 2:4 model."""
    cmd = [sys.executable, "-m", "nm_plugins.train.classify", "--config", str(PROXY), "sparsity.pattern=2:4",
           "data.train_subset=256", "data.val_subset=128", "data.batch_size=64", "optim.epochs=1",
           "optim.warmup_epochs=0", "train.eval_every=1", "train.progress=false", f"train.out_dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pattern"] == "2:4" and summary["method"] == "srste"
