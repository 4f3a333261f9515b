"""End-to-end on the COCO proxy with real mmengine Runners, compiled mmcv ops and pycocotools (CPU):
a training iteration + an evaluation per detector, the hook's scalars, masks through a checkpoint and
a resume, and mmdetection's own tools/train.py on our config."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmdet")

import mmdet  # noqa: E402

import nm_plugins.mmdet  # noqa: E402,F401
from nm_plugins.core import is_valid_nm_mask, sparse_layers  # noqa: E402
from nm_plugins.mmdet import NMSparsityHook  # noqa: E402
from nm_plugins.mmdet.train import build_runner  # noqa: E402

from mmdet_tiny import proxy_root, sparsity_hook, tiny_options  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "mmdet"
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("config, pattern, keys", [
    ("faster-rcnn_r18-w16_fpn_srste-2-4_proxy.py", "2:4", ["coco/bbox_mAP"]),
    ("mask-rcnn_r18-w16_fpn_srste-4-8_proxy.py", "4:8", ["coco/bbox_mAP", "coco/segm_mAP"]),
])
def test_train_iterations_hook_scalars_and_evaluation(tmp_path, proxy_root, config, pattern, keys):
    runner = build_runner(str(CFG / config), tiny_options(proxy_root), str(tmp_path / "work"))
    runner.train()
    assert runner.iter == 2
    hub = runner.message_hub
    for key in ("sad_init", "sad_prev", "sad_init_abs", "kept_share", "model_kept_share", "masks_valid",
                "sad_init/backbone.layer1", "sad_prev/backbone.layer4"):
        assert f"train/nm/{key}" in hub.log_scalars, key
    assert hub.get_scalar("train/nm/masks_valid").current() == 1.0
    assert hub.get_scalar("train/nm/kept_share").current() == pytest.approx(0.5)
    assert 0.5 < hub.get_scalar("train/nm/model_kept_share").current() < 1.0
    # two steps from scratch move some masks: SAD counts flips against the initial masks
    assert hub.get_scalar("train/nm/sad_init_abs").current() > 0
    assert len(sparsity_hook(runner).tracker.history) == 2
    # the scalars reach mmengine's log backends too
    scalars = list((tmp_path / "work").glob("*/vis_data/scalars.json"))
    assert scalars and "nm/sad_init" in scalars[0].read_text()
    metrics = runner.val()
    for key in keys:
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
    for _, layer in sparse_layers(runner.model):
        assert str(layer.pattern) == pattern and is_valid_nm_mask(layer.mask(), layer.pattern)


def test_masks_survive_checkpoint_and_resume(tmp_path, proxy_root):
    work = tmp_path / "work"
    config = str(CFG / "faster-rcnn_r18-w16_fpn_srste-2-8_proxy.py")
    first = build_runner(config, tiny_options(proxy_root), str(work))
    first.train()
    saved_masks = {n: l.mask().clone() for n, l in sparse_layers(first.model)}
    initial = {k: v.clone() for k, v in sparsity_hook(first).tracker.initial.items()}
    ckpt_path = work / "epoch_1.pth"
    ckpt = torch.load(ckpt_path, map_location="cpu")  # torch's default weights_only=True loader
    assert set(ckpt["nm_sparsity"]["sad_tracker"]["initial"]) == set(saved_masks)
    for name, mask in saved_masks.items():
        assert torch.equal(ckpt["state_dict"][f"{name}.nm_mask"], mask), name
    assert any(not torch.equal(initial[n], saved_masks[n]) for n in saved_masks)  # the topology did move

    second = build_runner(config, tiny_options(proxy_root, **{"train_cfg.max_epochs": 2}), str(work), resume=True)
    hook = sparsity_hook(second)
    captured = {}

    class Capture(NMSparsityHook):  # reads the masks right after resume, before the first new step
        priority = "LOWEST"

        def before_train(self, runner):
            captured.update({n: l.mask().clone() for n, l in sparse_layers(runner.model)})

    second.register_hook(Capture())
    second.train()
    assert second.iter == 4 and second.epoch == 2
    assert captured.keys() == saved_masks.keys()
    for name, mask in saved_masks.items():
        assert torch.equal(captured[name], mask), name
    for name, mask in initial.items():  # SAD keeps measuring against the first run's initial masks
        assert torch.equal(hook.tracker.initial[name], mask), name
    assert second.message_hub.get_scalar("train/nm/resume_mask_mismatch").current() == 0
    assert len(hook.tracker.history) == 4


def test_mmdet_tools_train_runs_our_config(tmp_path, proxy_root):
    """mmdetection's own tools/train.py (shipped in the wheel as mmdet/.mim/tools/train.py) on our config."""
    script = Path(mmdet.__file__).parent / ".mim" / "tools" / "train.py"
    assert script.is_file()
    opts = tiny_options(proxy_root, **{"train_dataloader.dataset.indices": 4})
    args = [f"{k}={v}".replace(" ", "") for k, v in opts.items()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(CFG / "mask-rcnn_r18-w16_fpn_srste-2-4_proxy.py"),
                           "--work-dir", str(tmp_path / "tools"), "--cfg-options", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "tools" / "epoch_1.pth").is_file()
    assert "nm/sad_init" in proc.stdout + proc.stderr


def test_torchrun_launcher_on_cpu(tmp_path, proxy_root):
    """``--launcher pytorch`` under torchrun: two CPU processes (gloo, DDP) train one step together."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = tiny_options(proxy_root)  # 8 images = one iteration of 4 per process
    args = [f"{k}={v}".replace(" ", "") for k, v in opts.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(port),
                           "-m", "nm_plugins.mmdet.train", str(CFG / "faster-rcnn_r18-w16_fpn_srste-2-4_proxy.py"),
                           "--launcher", "pytorch", "--work-dir", str(tmp_path / "ddp"), "--cfg-options", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp" / "epoch_1.pth", map_location="cpu")
    assert ckpt["meta"]["iter"] == 1
    assert "nm_sparsity" in ckpt and any(k.endswith(".nm_mask") for k in ckpt["state_dict"])
