"""The authors' released ImageNet checkpoints: a file written in their layout (their ResNetV1 key names and
shapes, their training dict, "module." prefixes) loads into our timm nm_* models, computes what their model
computed, and evaluates on an ImageNet val folder through `python -m nm_plugins.train.evaluate`."""
import json
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import nm_plugins.timm  # noqa: F401
from nm_plugins.core import is_valid_nm_mask, nm_mask, sparse_layers
from nm_plugins.timm.authors import AuthorsCheckpointError, convert_if_authors, is_authors_checkpoint
from nm_plugins.train import evaluate as ev


# --- a re-creation of their classification ResNetV1 (names, shapes and forward), written for this test -------
def their_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Their SparseConv mask: the M-N smallest |w| of every M consecutive entries of w laid out [out, kh, kw, in]
    are zeroed (argsort)."""
    t = w.detach().abs().permute(0, 2, 3, 1)
    rows = t.reshape(-1, m)
    drop = torch.argsort(rows, dim=1)[:, : m - n]
    keep = torch.ones_like(rows).scatter_(1, drop, 0.0)
    return keep.reshape(t.shape).permute(0, 3, 1, 2)


class TheirConv(nn.Conv2d):
    def __init__(self, cin, cout, k, stride=1, n=2, m=4):
        super().__init__(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.n, self.m = n, m

    def forward(self, x):
        return F.conv2d(x, self.weight * their_mask(self.weight, self.n, self.m), None, self.stride, self.padding)


class TheirBlock(nn.Module):
    def __init__(self, cin, planes, stride, bottleneck, n, m):
        super().__init__()
        out = planes * (4 if bottleneck else 1)
        if bottleneck:
            self.conv1, self.bn1 = TheirConv(cin, planes, 1, n=n, m=m), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = TheirConv(planes, planes, 3, stride, n, m), nn.BatchNorm2d(planes)
            self.conv3, self.bn3 = TheirConv(planes, out, 1, n=n, m=m), nn.BatchNorm2d(out)
        else:
            self.conv1, self.bn1 = TheirConv(cin, planes, 3, stride, n, m), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = TheirConv(planes, planes, 3, n=n, m=m), nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(TheirConv(cin, out, 1, stride, n, m), nn.BatchNorm2d(out))
        self.bottleneck = bottleneck

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        if self.bottleneck:
            y = F.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
        else:
            y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TheirResNet(nn.Module):
    def __init__(self, depth=18, num_classes=1000, n=2, m=4):
        super().__init__()
        bottleneck, blocks = {18: (False, (2, 2, 2, 2)), 50: (True, (3, 4, 6, 3)), 34: (False, (3, 4, 6, 3))}[depth]
        self.conv1, self.bn1 = TheirConv(3, 64, 7, 2, n, m), nn.BatchNorm2d(64)
        cin = 64
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            layer = []
            for b in range(count):
                layer.append(TheirBlock(cin, planes, 2 if (b == 0 and i > 1) else 1, bottleneck, n, m))
                cin = planes * (4 if bottleneck else 1)
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        self.fc = nn.Linear(cin, num_classes)
        g = torch.Generator().manual_seed(depth)
        for mod in self.modules():  # random weights and BN statistics, as after training
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * mod.out_channels
                mod.weight.data.normal_(0, math.sqrt(2.0 / k), generator=g)
            elif isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.data.uniform_(0.5, 1.5, generator=g)
                mod.bias.data.normal_(0, 0.1, generator=g)
                mod.running_mean.normal_(0, 0.1, generator=g)
                mod.running_var.uniform_(0.5, 1.5, generator=g)
                mod.num_batches_tracked.fill_(1000 + c)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.avg_pool2d(x, 7).flatten(1))


def their_file(tmp_path, model: TheirResNet, arch: str, name="model-best.pth"):
    """What their train_imagenet.py / save_checkpoint writes: a training dict, keys prefixed by 'module.'."""
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    path = tmp_path / name
    torch.save({"epoch": 120, "model": arch, "state_dict": sd, "best_prec1": 71.2,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "momentum": 0.9}]}}, path)
    return path


@pytest.mark.parametrize("depth,pattern", [(18, "2:4"), (50, "4:8")])
def test_their_checkpoint_loads_and_computes_what_their_model_computed(tmp_path, depth, pattern):
    n, m = map(int, pattern.split(":"))
    theirs = TheirResNet(depth, num_classes=10, n=n, m=m).eval()
    obj = torch.load(their_file(tmp_path, theirs, f"resnet{depth}"), weights_only=True)
    assert is_authors_checkpoint(obj)
    ours = timm.create_model(f"nm_resnet{depth}_srste_{pattern.replace(':', '_')}", num_classes=10).eval()
    sd = convert_if_authors(obj, pattern=pattern, model=ours)
    ours.load_state_dict(sd, strict=True)
    # our masks are recomputed from the loaded weights, valid N:M, and equal theirs for every N:M layer
    layers = dict(sparse_layers(ours))
    assert len(layers) == len([mod for mod in theirs.modules() if isinstance(mod, TheirConv)]) - 1  # all but the stem
    their_convs = dict(theirs.named_modules())
    for name, layer in layers.items():
        mask = layer.mask()
        assert is_valid_nm_mask(mask, pattern), name
        assert torch.equal(mask, nm_mask(layer.weight, pattern)), name
        assert torch.equal(mask, their_mask(their_convs[name].weight, n, m).bool()), name
    # the stem is dense in ours with their stem mask baked in; BN statistics and the classifier copied
    assert torch.equal(ours.conv1.weight, theirs.conv1.weight * their_mask(theirs.conv1.weight, n, m))
    assert int(ours.bn1.num_batches_tracked) == int(theirs.bn1.num_batches_tracked)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_other_files_pass_through_and_unmappable_ones_raise(tmp_path):
    ours = timm.create_model("nm_resnet18_srste_2_4", num_classes=10)
    own = {"model": ours.state_dict(), "epoch": 3}
    assert convert_if_authors(own, pattern="2:4") is own                     # our trainer checkpoint
    dense = timm.create_model("resnet18", num_classes=10).state_dict()
    assert not is_authors_checkpoint(dense) and convert_if_authors(dense, pattern="2:4") is dense  # timm dense
    theirs = TheirResNet(18, num_classes=10)
    obj = {"epoch": 1, "model": "resnet18", "state_dict": theirs.state_dict(), "best_prec1": 0.0}
    with pytest.raises(AuthorsCheckpointError, match="pass pattern"):
        convert_if_authors(obj)
    with pytest.raises(AuthorsCheckpointError, match=r"ResNet with basic blocks \[3, 4, 6, 3\]"):
        convert_if_authors({**obj, "state_dict": TheirResNet(34, num_classes=10).state_dict()}, pattern="2:4")
    extra = {**theirs.state_dict(), "layer1.0.conv1.alpha": torch.ones(1)}
    with pytest.raises(AuthorsCheckpointError, match="layer1.0.conv1.alpha"):
        convert_if_authors({**obj, "state_dict": extra}, pattern="2:4")
    r50 = timm.create_model("nm_resnet50_srste_2_4", num_classes=10)
    with pytest.raises(AuthorsCheckpointError, match="does not fit the model"):
        convert_if_authors(obj, pattern="2:4", model=r50)
    prefixed = {"module." + k: v for k, v in theirs.state_dict().items()}    # bare, prefixed: detected
    assert is_authors_checkpoint(prefixed)
    assert torch.equal(convert_if_authors(prefixed, pattern="2:4")["fc.weight"], theirs.fc.weight)


def make_val(root, classes=3, per_class=4):
    rng = np.random.default_rng(1)
    for c in range(classes):
        d = root / "val" / f"n0{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (60, 70, 3)) + 60 * c
            Image.fromarray(pixels.astype(np.uint8)).save(d / f"v{i}.JPEG", format="JPEG")
    return root


def test_evaluate_command_on_their_checkpoint(tmp_path, capsys):
    from torchvision import datasets, transforms as T
    root = make_val(tmp_path / "imagenet")
    theirs = TheirResNet(18, num_classes=3).eval()
    path = their_file(tmp_path, theirs, "resnet18")
    out = tmp_path / "eval.json"
    status = ev.main(["--model", "nm_resnet18_srste_2_4", "--checkpoint", str(path), "--imagenet-root", str(root),
                      "--device", "cpu", "--workers", "0", "--batch-size", "5", "--out", str(out)])
    assert status == 0
    result = json.loads(out.read_text())
    assert result["authors_layout"] and result["masks_valid"] and result["masks_follow_weights"]
    assert result["images"] == 12 and result["nm_layers"] == 19 and abs(result["kept_share"] - 0.5) < 1e-9
    # the same images through their model: the same top-1
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = datasets.ImageFolder(str(root / "val"), transform=tf)
    with torch.no_grad():
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        y = torch.tensor([ds[i][1] for i in range(len(ds))])
        correct = (theirs(x).argmax(1) == y).sum().item()
    assert result["top1"] == pytest.approx(100.0 * correct / len(ds))
    assert result["top5"] == pytest.approx(100.0)  # 3 classes


def test_evaluate_names_a_class_count_mismatch(tmp_path, capsys):
    root = make_val(tmp_path / "imagenet", classes=2, per_class=1)
    path = their_file(tmp_path, TheirResNet(18, num_classes=3), "resnet18")
    status = ev.main(["--model", "nm_resnet18_srste_2_4", "--checkpoint", str(path), "--imagenet-root", str(root),
                      "--device", "cpu", "--workers", "0"])
    assert status == 2
    assert "has 3 outputs but" in capsys.readouterr().err
