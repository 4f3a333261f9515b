"""Train an mmdetection config with an mmengine Runner (our plugin loaded, torch-2.6+ safe resume).

    python -m nm_plugins.mmdet.train CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--resume [CKPT]]
    torchrun --nproc-per-node 8 -m nm_plugins.mmdet.train CONFIG --launcher pytorch

mmdetection's own ``tools/train.py`` (shipped as ``mmdet/.mim/tools/train.py``) works on the same configs;
this entry adds the dataset check with a clear error, gloo on CPU-only machines, and a returned Runner.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import time

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import nm_plugins.mmdet  # noqa: F401  (registers the plugin, applies the torch compatibility fixes)


def load_config(config: str, cfg_options: dict | None = None, work_dir: str | None = None,
                launcher: str = "none") -> Config:
    """Read ``config``, merge ``cfg_options``, set the work dir (default ``work_dirs/<config name>``)
    and the launcher (gloo when there is no GPU)."""
    if not osp.isfile(config):
        raise FileNotFoundError(f"config {config} does not exist")
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(config))[0])
    cfg.launcher = launcher
    if cfg.get("visualizer"):  # mmengine keeps one visualizer per name: a fresh one per Runner of a process
        cfg.visualizer.name = f"visualizer_{time.time_ns()}"
    if launcher != "none" and not torch.cuda.is_available():
        # CPU processes: gloo, and DDP without device ids (mmengine would pass the local rank as a GPU id)
        cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
        cfg.setdefault("model_wrapper_cfg", dict(type="MMDistributedDataParallel", device_ids=None,
                                                 broadcast_buffers=False))
    return cfg


def _init_cpu_process_group(launcher: str) -> None:
    """mmengine's pytorch launcher calls torch.cuda.set_device; on CPU-only machines join gloo here."""
    if launcher == "pytorch" and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")


def check_datasets(cfg: Config) -> None:
    """Raise FileNotFoundError naming the missing path when a dataloader's annotation file or image
    folder is absent (the expected COCO layout is in the message)."""
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(key)
        if not loader:
            continue
        ds = loader["dataset"]
        while "dataset" in ds:  # wrappers (RepeatDataset, ...)
            ds = ds["dataset"]
        root = ds.get("data_root") or ""
        ann = osp.join(root, ds.get("ann_file", ""))
        img = osp.join(root, (ds.get("data_prefix") or {}).get("img", ""))
        for path in (ann, img):
            if not osp.exists(path):
                raise FileNotFoundError(
                    f"{key}: {path} does not exist. Expected a COCO layout under data_root={root!r}: "
                    "annotations/instances_{train,val}2017.json with images in train2017/ and val2017/ (real "
                    "COCO, set COCO_ROOT), or run `make coco-proxy-data` for the proxy (data/coco_fmnist).")


def build_runner(config: str, cfg_options: dict | None = None, work_dir: str | None = None,
                 launcher: str = "none", resume: "str | bool | None" = None) -> Runner:
    """An mmengine Runner for ``config``; ``resume=True`` resumes the latest checkpoint of the work dir,
    a path resumes that checkpoint."""
    cfg = load_config(config, cfg_options, work_dir, launcher)
    check_datasets(cfg)
    _init_cpu_process_group(launcher)
    if resume:
        cfg.resume = True
        cfg.load_from = None if resume is True else resume
    return Runner.from_cfg(cfg)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train an mmdetection config with the nm_plugins plugin loaded")
    parser.add_argument("config")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                        help="override config entries, key=value (mmengine syntax)")
    parser.add_argument("--resume", nargs="?", const=True, default=None,
                        help="resume the latest checkpoint of the work dir, or the given one")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    runner = build_runner(args.config, args.cfg_options, args.work_dir, args.launcher, args.resume)
    runner.train()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
