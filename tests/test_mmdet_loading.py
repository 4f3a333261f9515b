"""Fine-tuning from, loading and sharing sparse detectors with real mmengine Runners on the COCO proxy:
``load_from`` starts a new SAD baseline (and survives a changed set of N:M layers), a sparse checkpoint is
refused by dense layers, the export command writes a checkpoint that plain mmdetection loads without our
plugin and that computes what the sparse model computes, and whole-detector N:M-aware FLOPs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmdet")

import nm_plugins.mmdet  # noqa: E402,F401
from mmengine.hooks import Hook  # noqa: E402

from nm_plugins.core import SparseLinear, count_params_flops, sparse_layers  # noqa: E402
from nm_plugins.mmdet.export import build_detector  # noqa: E402
from nm_plugins.mmdet.flops import count_detector  # noqa: E402
from nm_plugins.mmdet.train import build_runner  # noqa: E402

from mmdet_tiny import proxy_root, sparsity_hook, tiny_options  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "mmdet"
SPARSE = str(CFG / "faster-rcnn_r18-w16_fpn_srste-2-4_proxy.py")
DENSE = str(CFG / "faster-rcnn_r18-w16_fpn_dense_proxy.py")
SPARSE_HEAD = {"model.roi_head.bbox_head.type": "NMShared2FCBBoxHead",
               "model.roi_head.bbox_head.fc_sparsity": dict(pattern="2:4", method="srste")}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sparse_ckpt(proxy_root, tmp_path_factory):
    """A real runner checkpoint of the 2:4 proxy detector after two iterations (HistoryBuffers included)."""
    work = tmp_path_factory.mktemp("sparse")
    runner = build_runner(SPARSE, tiny_options(proxy_root), str(work))
    runner.train()
    return work / "epoch_1.pth"


@pytest.fixture(scope="module")
def finetuned(proxy_root, sparse_ckpt, tmp_path_factory):
    """``load_from`` the 2:4 checkpoint into the config with N:M shared FCs too (more N:M layers): the
    fine-tuning run, its masks right after loading, and its checkpoint."""
    work = tmp_path_factory.mktemp("finetune")
    runner = build_runner(SPARSE, tiny_options(proxy_root, load_from=str(sparse_ckpt), **SPARSE_HEAD), str(work))
    loaded = {}

    class Capture(Hook):  # the masks after loading, before the first fine-tuning step
        priority = "LOWEST"

        def before_train(self, runner):
            loaded.update({n: l.mask().clone() for n, l in sparse_layers(runner.model)})

    runner.register_hook(Capture())
    runner.train()  # the old hook restored the first run's tracker: KeyError for the new FC layers
    return runner, loaded, work / "epoch_1.pth"


def test_load_from_starts_a_new_sad_baseline(finetuned, sparse_ckpt):
    runner, loaded, _ = finetuned
    hook = sparsity_hook(runner)
    assert hook.loaded == "load_from" and runner.iter == 2
    fcs = [n for n, l in sparse_layers(runner.model) if isinstance(l, SparseLinear)]
    assert fcs == ["roi_head.bbox_head.shared_fcs.0", "roi_head.bbox_head.shared_fcs.1"]
    assert set(hook.tracker.initial) == set(loaded)
    for name, mask in loaded.items():  # SAD measured from the masks this run started with
        assert torch.equal(hook.tracker.initial[name].cpu(), mask.cpu()), name
    first = torch.load(sparse_ckpt, map_location="cpu")
    first_initial = first["nm_sparsity"]["sad_tracker"]["initial"]
    assert any(not torch.equal(first_initial[n].cpu(), loaded[n].cpu()) for n in first_initial)  # not the old baseline
    assert len(hook.tracker.history) == 2  # the previous run's history is not carried over
    ckpt = torch.load(finetuned[2], map_location="cpu")
    assert ckpt["nm_sparsity"]["layers"]["roi_head.bbox_head.shared_fcs.0"] == {"method": "srste", "pattern": "2:4"}


def test_resume_with_more_nm_layers_keeps_saved_baseline_and_starts_new_ones(proxy_root, sparse_ckpt, tmp_path):
    """Resume into a config with extra N:M layers: the saved layers keep their SAD baseline, the new ones
    start from their current masks (no KeyError)."""
    import shutil
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(sparse_ckpt, work / "epoch_1.pth")
    (work / "last_checkpoint").write_text(str(work / "epoch_1.pth"))
    runner = build_runner(SPARSE, tiny_options(proxy_root, **{"train_cfg.max_epochs": 2}, **SPARSE_HEAD), str(work),
                          resume=True)
    runner.train()
    hook = sparsity_hook(runner)
    saved = torch.load(sparse_ckpt, map_location="cpu")["nm_sparsity"]["sad_tracker"]["initial"]
    assert hook.loaded == "resume" and runner.iter == 4
    for name, mask in saved.items():
        assert torch.equal(hook.tracker.initial[name].cpu(), mask.cpu()), name
    assert "roi_head.bbox_head.shared_fcs.0" in hook.tracker.initial


@pytest.mark.parametrize("conv_cfg", ["dense_method", "plain_conv"])
def test_sparse_checkpoint_into_dense_config_is_refused(proxy_root, sparse_ckpt, tmp_path, conv_cfg):
    extra = {"load_from": str(sparse_ckpt)}
    if conv_cfg == "plain_conv":
        extra["model.backbone.conv_cfg"] = None
    runner = build_runner(DENSE, tiny_options(proxy_root, **extra), str(tmp_path / "work"))
    with pytest.raises(ValueError, match="backbone.layer1.0.conv1.*unmasked master weights"):
        runner.train()
    assert runner.iter == 0


def test_sparse_classifier_into_dense_backbone_init_is_refused(proxy_root, tmp_path):
    """A Pretrained backbone init_cfg holding a sparse classifier (our trainer's format) for dense layers."""
    from nm_plugins.runtime.training import save_checkpoint
    _, model = build_detector(SPARSE)
    state = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    path = save_checkpoint(tmp_path / "model_best.pth",
                           {"model": state, "epoch": 1, "config": {"sparsity": {"method": "srste", "pattern": "2:4"}}})
    init = {"model.backbone.init_cfg": dict(_delete_=True, type="Pretrained", checkpoint=str(path))}
    runner = build_runner(DENSE, tiny_options(proxy_root, **init), str(tmp_path / "dense"))
    with pytest.raises(ValueError, match="backbone.init_cfg checkpoint.*method='dense'"):
        runner.train()
    runner = build_runner(SPARSE, tiny_options(proxy_root, **init, **{"train_cfg.max_epochs": 0}), str(tmp_path / "ok"))
    runner.train()  # the sparse config takes it


_PLAIN_SCRIPT = r"""
import sys, torch
from mmengine.config import Config
from mmdet.apis import init_detector
cfg_path, ckpt_path, io_path = sys.argv[1:4]
state = torch.load(ckpt_path, map_location="cpu")["state_dict"]   # torch's default: weights_only=True
model = init_detector(Config.fromfile(cfg_path), ckpt_path, device="cpu")
model.load_state_dict(state, strict=True)
assert not any(k.startswith("nm_plugins") for k in sys.modules), "nm_plugins was imported"
assert all(type(m) in (torch.nn.Conv2d, torch.nn.Linear) for m in model.modules()
           if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
io = torch.load(io_path, weights_only=False)  # the test's own input file (DetDataSample objects)
with torch.no_grad():
    feats = model.extract_feat(io["x"])
    res = model.predict(io["x"], io["samples"])[0].pred_instances
torch.save({"feats": [f.clone() for f in feats], "bboxes": res.bboxes, "scores": res.scores, "labels": res.labels},
           io_path + ".out")
"""


def test_export_loads_in_plain_mmdet_and_matches_sparse_model(finetuned, tmp_path):
    from mmdet.structures import DetDataSample
    from mmengine.runner import load_checkpoint

    _, _, ckpt = finetuned
    out = tmp_path / "export" / "detector_dense.pth"
    proc = subprocess.run([sys.executable, "-m", "nm_plugins.mmdet.export", SPARSE, str(ckpt), str(out),
                           "--cfg-options", "model.roi_head.bbox_head.type=NMShared2FCBBoxHead"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = torch.load(out, map_location="cpu", weights_only=True)
    assert not any("nm_mask" in k for k in exported["state_dict"]) and set(exported) == {"meta", "state_dict"}
    assert exported["meta"]["nm_export"]["layers"]["roi_head.bbox_head.shared_fcs.1"]["pattern"] == "2:4"

    # the sparse model, as trained: the same config, the checkpoint loaded with the plugin
    _, sparse = build_detector(SPARSE, SPARSE_HEAD)
    load_checkpoint(sparse, str(ckpt), map_location="cpu", strict=True)
    sparse.eval()
    assert sum(1 for _ in sparse_layers(sparse)) > 2
    x = torch.rand(1, 3, 96, 96) * 255
    samples = [DetDataSample(metainfo=dict(img_shape=(96, 96), ori_shape=(96, 96), scale_factor=(1.0, 1.0),
                                           pad_shape=(96, 96), batch_input_shape=(96, 96)))]
    with torch.no_grad():
        data = sparse.data_preprocessor({"inputs": [x[0].to(torch.uint8)], "data_samples": samples}, False)
        x_in, samples = data["inputs"], data["data_samples"]
        feats = [f.clone() for f in sparse.extract_feat(x_in)]
        res = sparse.predict(x_in, samples)[0].pred_instances
    io_path = tmp_path / "io.pt"
    torch.save({"x": x_in, "samples": samples}, io_path)

    # a fresh interpreter with plain mmdetection, no nm_plugins on the path
    script = tmp_path / "plain.py"
    script.write_text(_PLAIN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), str(out.with_suffix(".py")), str(out), str(io_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = torch.load(str(io_path) + ".out", weights_only=False)
    for a, b in zip(feats, plain["feats"]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert len(res.scores) > 0
    torch.testing.assert_close(plain["scores"], res.scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain["bboxes"], res.bboxes, rtol=1e-4, atol=1e-3)
    assert torch.equal(plain["labels"], res.labels)


def test_whole_detector_flops_count_kept_weights():
    counts = {}
    for pattern in ("dense", "2:4", "1:4"):
        method = "dense" if pattern == "dense" else "srste"
        _, model = build_detector(DENSE, {"model.backbone.conv_cfg.method": method,
                                          "model.backbone.conv_cfg.pattern": "2:4" if pattern == "dense" else pattern})
        counts[pattern] = count_detector(model.eval(), (96, 96))
    dense, half, quarter = counts["dense"], counts["2:4"], counts["1:4"]
    assert dense["flops"] > half["flops"] > quarter["flops"] and dense["params"] > half["params"] > quarter["params"]
    # only the backbone is N:M: the whole-model differences are exactly the backbone's
    assert dense["flops"] - half["flops"] == dense["backbone_flops"] - half["backbone_flops"] > 0
    assert dense["params"] - quarter["params"] == dense["backbone_params"] - quarter["backbone_params"] > 0
    assert dense["flops"] > 2 * dense["backbone_flops"]  # neck, RPN and the RoI head on 200 proposals count too
    assert dense["proposals"] == 200  # test_cfg.rpn.max_per_img of the proxy config


def test_core_counter_takes_a_forward_for_models_that_need_more_than_a_tensor():
    _, model = build_detector(SPARSE)
    with pytest.raises(Exception):
        count_params_flops(model.eval(), (1, 3, 96, 96))  # a detector's forward needs its data samples
    params, flops = count_params_flops(model, (1, 3, 96, 96), forward=lambda m, x: m.extract_feat(x))
    assert 0 < flops < count_detector(model, (96, 96))["flops"]
