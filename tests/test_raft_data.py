"""Synthetic proxy generator (flow checked by warping), augmentations, dataset roots and torchvision readers."""
import pytest
import torch
import torch.nn.functional as F

from nm_plugins.raft import datasets
from nm_plugins.raft.augment import FlowAugment
from nm_plugins.raft.proxy import ProxyFlowDataset, generate, render_pair


def _warp_back(img2, flow):
    """Sample img2 [3, H, W] at p + flow(p): frame 2 brought back onto frame 1."""
    h, w = flow.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    grid = torch.stack([2 * (xs + flow[0]) / (w - 1) - 1, 2 * (ys + flow[1]) / (h - 1) - 1], dim=-1)[None]
    return F.grid_sample(img2[None].float(), grid, mode="bilinear", align_corners=True)[0]


def _photometric(img1, img2, flow, valid):
    h, w = flow.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    tx, ty = xs + flow[0], ys + flow[1]
    valid = valid & (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)  # crops move targets out of frame
    err = (_warp_back(img2, flow) - img1.float()).abs().mean(0)
    still = (img2.float() - img1.float()).abs().mean(0)
    return err[valid].mean().item(), still[valid].mean().item()


@pytest.mark.parametrize("index", [0, 1, 2, 7])
def test_generator_flow_warps_frame2_onto_frame1(index):
    s = render_pair(index, "train", size=128, seed=0)
    assert s["img1"].shape == (3, 128, 128) and s["flow"].shape == (2, 128, 128)
    assert s["valid"].float().mean() > 0.5  # most pixels are visible in both frames
    assert s["flow"].norm(dim=0).mean() > 1.0  # things do move
    err, still = _photometric(s["img1"], s["img2"], s["flow"], s["valid"])
    assert err < 0.006, err            # near zero on valid pixels (images in [0, 1])
    assert err < 0.1 * still, (err, still)  # ... and far below the error of assuming no motion
    # the mask matters: occluded / out-of-frame pixels do not warp back
    bad, _ = _photometric(s["img1"], s["img2"], s["flow"], ~s["valid"])
    assert bad > 3 * err


def test_generator_is_deterministic_cached_and_splits_differ(tmp_path):
    a = generate("val", 3, size=64, seed=5, cache_dir=tmp_path)
    assert list(tmp_path.glob("*.pt"))
    b = generate("val", 2, size=64, seed=5, cache_dir=tmp_path)  # served from the larger cache
    for key in a:
        assert torch.equal(a[key][:2], b[key])
    direct = render_pair(1, "val", size=64, seed=5)
    assert torch.equal(a["valid"][1], direct["valid"])
    assert (a["flow"][1].float() - direct["flow"]).abs().max() < 0.02  # float16 storage
    assert (a["img1"][1].float() / 255 - direct["img1"]).abs().max() <= 0.5 / 255 + 1e-6
    train = render_pair(1, "train", size=64, seed=5)
    assert not torch.equal(train["img1"], direct["img1"])
    with pytest.raises(ValueError, match="split"):
        render_pair(0, "test")


def test_cached_dataset_with_augmentation_still_warps(tmp_path):
    aug = FlowAugment((128, 128), spatial=False, eraser=False, do_flip=True, asymmetric_color_prob=0.0)
    ds = ProxyFlowDataset("train", 6, size=128, seed=0, transforms=aug, cache_dir=tmp_path)
    torch.manual_seed(3)
    for i in range(len(ds)):  # random flips and symmetric colour jitter keep frame 2 -> frame 1 consistent
        img1, img2, flow, valid = ds[i]
        assert img1.min() >= -1 and img1.max() <= 1 and img1.dtype == torch.float32
        err, still = _photometric((img1 + 1) / 2, (img2 + 1) / 2, flow, valid)
        assert err < 0.2 * still, (i, err, still)


def test_spatial_augmentation_rescales_flow_consistently():
    s = render_pair(4, "train", size=128, seed=0)
    u8 = lambda x: (x * 255).round().to(torch.uint8)  # noqa: E731
    aug = FlowAugment((96, 112), min_scale=0.2, max_scale=0.5, spatial_prob=1.0, stretch_prob=1.0,
                      do_flip=False, eraser=False, asymmetric_color_prob=0.0)
    aug.jitter = lambda x: x  # keep colours: the warp check is photometric
    torch.manual_seed(0)
    img1, img2, flow, valid = aug(u8(s["img1"]), u8(s["img2"]), s["flow"], s["valid"])
    assert img1.shape == (3, 96, 112) and flow.shape == (2, 96, 112) and valid.shape == (96, 112)
    # resizing blends flows across object boundaries (as cv2.resize does in RAFT): judge pixels away from them
    inner = -F.max_pool2d(-valid[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0.5
    err, still = _photometric((img1 + 1) / 2, (img2 + 1) / 2, flow, inner)
    assert err < 0.1 * still, (err, still)
    unscaled, _ = _photometric((img1 + 1) / 2, (img2 + 1) / 2, flow / 2 ** 0.35, inner)
    assert err < 0.5 * unscaled, (err, unscaled)  # the flow really had to be rescaled


def test_sparse_resize_moves_samples_without_interpolating():
    flow = torch.zeros(2, 20, 30)
    valid = torch.zeros(20, 30, dtype=torch.bool)
    flow[:, 10, 10] = torch.tensor([4.0, -2.0])
    valid[10, 10] = True
    img = torch.zeros(3, 20, 30, dtype=torch.uint8)
    aug = FlowAugment((16, 16), sparse=True)
    _, _, new_flow, new_valid = aug._resize(img, img, flow, valid, 2.0, 2.0)
    assert new_valid.sum() == 1 and new_valid[20, 20]
    assert torch.equal(new_flow[:, 20, 20], torch.tensor([8.0, -4.0]))


def test_missing_dataset_root_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("CHAIRS_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match="CHAIRS_ROOT is not set.*FlyingChairs/data"):
        datasets.train_set("chairs", (64, 64))
    monkeypatch.setenv("SINTEL_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"SINTEL_ROOT={tmp_path} does not hold a Sintel/"):
        datasets.val_set("sintel_clean")
    assert not datasets.available("sintel")
    with pytest.raises(ValueError, match="unknown RAFT training stage"):
        datasets.train_set("monkaa", (64, 64))


def test_flying_chairs_layout_read_by_torchvision(monkeypatch, tmp_path, flying_chairs):
    """A miniature FlyingChairs in the official layout goes through torchvision's reader and our augmentation."""
    flying_chairs(tmp_path, [1, 1, 2], (72, 88))
    monkeypatch.setenv("CHAIRS_ROOT", str(tmp_path))
    train = datasets.train_set("chairs", (48, 64))
    assert len(train) == 2
    img1, img2, flow, valid = train[0]
    assert img1.shape == (3, 48, 64) and flow.shape == (2, 48, 64) and valid.shape == (48, 64)
    val = datasets.val_set("chairs")
    assert len(val) == 1 and val[0][2].shape == (2, 72, 88)
