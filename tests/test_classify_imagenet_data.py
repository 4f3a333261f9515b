"""ImageNet-layout data: clear errors for a wrong root or an unreadable image, and a real tiny training run
through the paper's config (ResNet-18 SR-STE 2:4) on a folder of generated images."""
import json
from pathlib import Path

import pytest

from nm_plugins.train.classify import run
from nm_plugins.train.config import load_config
from nm_plugins.train.data import UnreadableImageError, check_imagenet_root

from imagenet_tree import write_imagenet

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "imagenet" / "resnet18_srste_2_4.yaml"


def tiny(root, out, *extra):
    return load_config(CONFIG, [f"data.root={root}", "data.img_size=32", "data.batch_size=6", "data.workers=0",
                                "optim.epochs=1", "optim.warmup_epochs=0", "train.device=cpu", "train.threads=1",
                                "train.progress=false", f"train.out_dir={out}", *extra])


def test_root_errors_name_the_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'none'} does not exist.*train/<class>"):
        check_imagenet_root(tmp_path / "none")
    (tmp_path / "r" / "train" / "n01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no val/ folder"):
        check_imagenet_root(tmp_path / "r")
    (tmp_path / "r" / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no class folders"):
        check_imagenet_root(tmp_path / "r")
    (tmp_path / "r" / "val" / "n02").mkdir()
    with pytest.raises(ValueError, match=r"only in train: \['n01'\], only in val: \['n02'\]"):
        check_imagenet_root(tmp_path / "r")
    with pytest.raises(ValueError, match="IMAGENET_ROOT"):
        check_imagenet_root(None)


def test_train_on_imagenet_layout_with_paper_config(tmp_path):
    root = write_imagenet(tmp_path / "imagenet")
    summary = run(tiny(root, tmp_path / "out"))
    assert summary["status"] == "done" and summary["model"] == "resnet18" and summary["pattern"] == "2:4"
    log = json.loads((tmp_path / "out" / "log.jsonl").read_text().splitlines()[-1])
    assert log["val"]["images"] == 6 and log["train"]["skipped_images"] == 0


def test_unreadable_image_error_or_counted_skip(tmp_path):
    root = write_imagenet(tmp_path / "imagenet")
    bad = root / "train" / "n02" / "broken.JPEG"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(UnreadableImageError, match="broken.JPEG"):
        run(tiny(root, tmp_path / "a", "data.batch_size=19"))
    run(tiny(root, tmp_path / "b", "data.batch_size=19", "data.skip_bad_images=true"))
    log = json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[-1])
    assert log["train"]["skipped_images"] == 1
