"""``data.decode: gpu``: batched decoding and the paper's augmentation on the training device. On the CPU the
same code runs (libjpeg instead of nvJPEG): crop boxes drawn exactly as torchvision draws them, the same
crop / flip / lighting / normalisation as the PIL path for the same random draws, val resize + centre crop,
bad files named or skipped, and a real training run through the trainer with the key set."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from nm_plugins.train.classify import run
from nm_plugins.train.config import load_config
from nm_plugins.train.data import IMAGENET_MEAN, IMAGENET_STD, ImageNetLoader, Lighting, UnreadableImageError
from nm_plugins.train.gpu_loader import DeviceAugment, DeviceImageNetLoader, decode_batch, rrc_params
from torchvision.io import read_file

from imagenet_tree import write_imagenet

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "imagenet" / "resnet18_srste_2_4.yaml"


def data_cfg(root, **extra):
    cfg = {"root": str(root), "img_size": 32, "batch_size": 6, "workers": 0, "train_subset": None, "val_subset": None,
           "skip_bad_images": False, "augment": True, "decode": "gpu"}
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize("hw", [(375, 500), (500, 333), (40, 48), (10, 1000), (1000, 10), (7, 7)])
def test_crop_boxes_are_torchvisions_draws(hw):
    img = torch.zeros(3, *hw)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
        assert rrc_params(*hw, torch.Generator().manual_seed(seed)) == expected, (hw, seed)


def test_train_augmentation_matches_the_pil_path_for_the_same_draws(tmp_path):
    """One image, one seed: the PIL pipeline (RandomResizedCrop, flip, ToTensor, Lighting, Normalize) on the
    global generator and DeviceAugment on a generator with the same seed draw the same box, flip and lighting;
    the images then differ only by PIL's uint8 rounding of the resized crop (mean 0.005 measured; a wrong
    flip or crop gives 0.16-0.20)."""
    root = write_imagenet(tmp_path / "im", per_class=(1, 1), size=(120, 160))
    path = next((root / "train").rglob("*.JPEG"))
    pil = T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(), T.ToTensor(), Lighting(0.1),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    aug = DeviceAugment(32, True, IMAGENET_MEAN, IMAGENET_STD)
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        want = pil(Image.open(path).convert("RGB"))
        images, kept = decode_batch([read_file(str(path))], [path], torch.device("cpu"), False)
        got = aug(images, torch.Generator().manual_seed(seed))[0]
        diff = (got - want).abs()
        assert got.shape == want.shape == (3, 32, 32) and kept == [0]
        assert diff.mean() < 0.01 and diff.max() < 0.05, (seed, float(diff.mean()), float(diff.max()))
        g = torch.Generator().manual_seed(seed)
        rrc_params(120, 160, g)
        flips.add(torch.rand(1, generator=g).item() < 0.5)
    assert flips == {True, False}  # both branches of the flip were compared


def test_val_resize_and_centre_crop_match_the_pil_path(tmp_path):
    root = write_imagenet(tmp_path / "im", per_class=(1, 1), size=(90, 150))
    path = next((root / "val").rglob("*.JPEG"))
    pil = T.Compose([T.Resize(int(round(32 * 256 / 224))), T.CenterCrop(32), T.ToTensor(),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    want = pil(Image.open(path).convert("RGB"))
    images, _ = decode_batch([read_file(str(path))], [path], torch.device("cpu"), False)
    got = DeviceAugment(32, False, IMAGENET_MEAN, IMAGENET_STD)(images, torch.Generator())[0]
    assert (got - want).abs().max() < 0.05


def test_loader_shards_orders_and_labels_like_the_pil_loader(tmp_path):
    root = write_imagenet(tmp_path / "im")
    for rank in (0, 1):
        cpu = ImageNetLoader(data_cfg(root, decode="cpu"), "train", rank, 2, seed=3)
        dev = DeviceImageNetLoader(data_cfg(root), "train", rank, 2, seed=3, device="cpu")
        for epoch in (0, 1):
            cpu.set_epoch(epoch)
            dev.set_epoch(epoch)
            a, b = list(cpu), list(dev)
            assert len(a) == len(b) == len(dev) == 3  # 18 images, 2 ranks, 3 per rank and batch
            for (xa, ya, _), (xb, yb, sb) in zip(a, b):
                assert torch.equal(ya, yb) and xb.shape == xa.shape == (3, 3, 32, 32) and sb == 0
                assert xb.device.type == "cpu" and torch.isfinite(xb).all()
    again = DeviceImageNetLoader(data_cfg(root), "train", 0, 1, seed=3, device="cpu")
    first = [x for x, _, _ in DeviceImageNetLoader(data_cfg(root), "train", 0, 1, seed=3, device="cpu")]
    assert all(torch.equal(x, y) for x, y in zip(first, [x for x, _, _ in again]))  # (seed, epoch) decide the crops


def test_unreadable_file_named_or_skipped_and_png_decoded(tmp_path):
    root = write_imagenet(tmp_path / "im")
    Image.new("RGB", (50, 40), (200, 10, 10)).save(root / "train" / "n01" / "png_named.JPEG", format="PNG")
    (root / "train" / "n02" / "broken.JPEG").write_bytes(b"this is not a jpeg")
    with pytest.raises(UnreadableImageError, match="broken.JPEG"):
        list(DeviceImageNetLoader(data_cfg(root, batch_size=20), "train", 0, 1, seed=0, device="cpu"))
    batches = list(DeviceImageNetLoader(data_cfg(root, batch_size=20, skip_bad_images=True), "train", 0, 1, 0, "cpu"))
    assert len(batches) == 1 and batches[0][2] == 1 and batches[0][0].shape[0] == 19  # the PNG was kept


def test_config_key_validated():
    with pytest.raises(ValueError, match="data.decode must be cpu .* or gpu"):
        load_config(CONFIG, ["data.decode=nvjpeg"])
    with pytest.raises(ValueError, match="imagenet dataset only"):
        load_config(REPO / "configs" / "imagenet_proxy" / "fashion_mnist.yaml", ["data.decode=gpu"])
    assert load_config(CONFIG)["data"]["decode"] == "cpu"


def test_trainer_runs_with_device_decoding(tmp_path):
    root = write_imagenet(tmp_path / "im")
    cfg = load_config(CONFIG, [f"data.root={root}", "data.img_size=32", "data.batch_size=6", "data.workers=1",
                               "data.decode=gpu", "optim.epochs=1", "optim.warmup_epochs=0", "train.device=cpu",
                               "train.threads=1", "train.progress=false", f"train.out_dir={tmp_path / 'out'}"])
    summary = run(cfg)
    assert summary["status"] == "done"
    log = json.loads((tmp_path / "out" / "log.jsonl").read_text().splitlines()[-1])
    assert log["val"]["images"] == 6 and log["train"]["skipped_images"] == 0 and np.isfinite(log["train"]["loss"])


def test_background_preparation_stops_with_the_consumer(tmp_path):
    import threading
    root = write_imagenet(tmp_path / "im")
    it = iter(DeviceImageNetLoader(data_cfg(root, batch_size=3), "train", 0, 1, seed=0, device="cpu"))
    next(it)
    assert any(t.name == "nm-device-loader" for t in threading.enumerate())
    it.close()  # a consumer that stops early (a break, an exception) lets the thread end
    assert not any(t.name == "nm-device-loader" and t.is_alive() for t in threading.enumerate())


def test_loader_benchmark_script_writes_both_paths(tmp_path):
    from benchmarks import loader as bench
    assert bench.main(["--images", "8", "--batch", "4", "--min-images", "8", "--workers", "0", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "cpu.json").read_text())
    assert [(r["decode"], r["workers"]) for r in out["runs"]] == [("cpu", 0), ("gpu", 0)]
    assert all(r["images"] >= 8 and r["images_per_s"] > 0 and r["epochs"] >= 2 for r in out["runs"])
    assert "| gpu | cpu | 0 |" in (tmp_path / "cpu.md").read_text()
    empty = DeviceImageNetLoader(data_cfg(write_imagenet(tmp_path / "im"), batch_size=100), "train", 0, 1, 0, "cpu")
    with pytest.raises(ValueError, match="no batch"):
        bench.images_per_s(empty)
