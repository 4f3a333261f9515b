"""ImageNet loader throughput: images/s of the training loader alone, PIL path vs device decoding.

    python -m benchmarks.loader [--images 256] [--workers 0,2] [--out results/loader]

Writes an ImageNet class-folder tree of generated JPEGs at ImageNet's typical size (500x375 and 375x500,
quality 90, about 100 KB each, smooth content with noise so that they compress like photographs) into a
temporary folder, then times the training loader of ``nm_plugins.train`` over it, batch 128, img 224:
  * ``data.decode: cpu``: PIL decode + RandomResizedCrop/flip/ToTensor/lighting/normalise in the workers;
  * ``data.decode: gpu``: bytes read in the workers, batched ``decode_jpeg`` and the same augmentation on
    the device (CUDA when there is one; the same code on the CPU otherwise);
with 0 workers (one process, one torch thread, does everything: the rate of one worker) and each
``--workers`` count.
Writes ``<out>/<gpu or cpu>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nm_plugins.runtime.results import write_results_json, write_text


def write_imagenet_jpegs(root: Path, images: int, classes: int = 8, sizes=((375, 500), (500, 375)), val: int = 0,
                         seed: int = 0) -> Path:
    """``root/{train,val}/nXXXXXXXX/*.JPEG``: ``images`` train files over ``classes`` folders (``val`` per class
    in val/); photograph-like content (smooth colour fields plus noise), ImageNet's usual sizes."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, count in (("train", images), ("val", val * classes)):
        for k in range(count if count else 0):
            c = k % classes
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            h, w = sizes[k % len(sizes)]
            coarse = rng.integers(0, 255, (h // 32 + 1, w // 32 + 1, 3)).astype(np.uint8)
            img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
            img = np.clip(img + rng.normal(0, 12, img.shape) + 10 * c, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{split}_{k:06d}.JPEG", format="JPEG", quality=90)
        if split == "val" and count == 0:  # the loaders want the same class folders in val/
            for c in range(classes):
                (root / "val" / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
    return root


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else the platform's machine name."""
    import platform
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def images_per_s(loader, min_images: int = 0, device=None) -> dict:
    """Iterate ``loader`` (batches of (images, labels, skipped); epoch after epoch until ``min_images`` were
    timed): images/s after the first batch (worker start-up excluded), the device synchronised before the
    clock stops. Several epochs keep workers that prefetched ahead of the first batch from inflating it."""
    sync = (lambda: torch.cuda.synchronize()) if device is not None and torch.device(device).type == "cuda" else (lambda: None)
    count, batches, epoch, t0, cpu0, batch = 0, 0, 0, None, 0.0, None
    while t0 is None or count < min_images:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        seen = 0
        for x, _, _ in loader:
            seen += 1
            if t0 is None:  # the first batch: start the clock
                batch = int(x.shape[0])
                sync()
                t0, cpu0 = time.perf_counter(), time.process_time()
                continue
            count += x.shape[0]
            batches += 1
        epoch += 1
        if seen == 0:
            raise ValueError("images_per_s: the loader gave no batch in an epoch (fewer images than one batch?)")
    sync()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    # CPU seconds of this process (all its threads; loader worker processes not included): with 0 workers,
    # images per CPU-second is what one core does even when other jobs share the machine
    return {"images": count, "seconds": seconds, "images_per_s": count / seconds if seconds > 0 else float("nan"),
            "process_cpu_seconds": cpu_seconds, "images_per_process_cpu_s": count / cpu_seconds if cpu_seconds > 0 else None,
            "batch": batch, "epochs": epoch}


def measure(root: Path, decode: str, workers: int, device: str, batch: int = 128, img_size: int = 224,
            min_images: int = 1024) -> dict:
    """images/s of the training loader over ``root`` (at least ``min_images``, first batch excluded)."""
    from nm_plugins.train.data import ImageNetLoader
    from nm_plugins.train.gpu_loader import DeviceImageNetLoader
    cfg = {"root": str(root), "img_size": img_size, "batch_size": batch, "workers": workers, "train_subset": None,
           "val_subset": None, "skip_bad_images": False, "augment": True, "decode": decode}
    if decode == "gpu":
        loader = DeviceImageNetLoader(cfg, "train", 0, 1, seed=0, device=device)
    else:
        loader = ImageNetLoader(cfg, "train", 0, 1, seed=0)
    res = images_per_s(loader, min_images, device=device)
    res.update(decode=decode, workers=workers, device=device if decode == "gpu" else "cpu")
    res["images_per_s_per_worker"] = res["images_per_s"] / max(workers, 1)
    return res


def markdown(out: dict) -> str:
    """The measured rates as a table."""
    env = out["env"]
    lines = [f"# ImageNet training loader throughput ({env['gpu']}; {env['cpu']}, {env['cores']} cores, "
             f"load average {env['load_average_1min_before']:.1f} before the run)", "",
             f"torch {env['torch']}, torchvision {env['torchvision']}; {out['images']} generated JPEGs, timed over "
             f"{out['min_images']}+ images after the first batch "
             f"(500x375 / 375x500, mean {out['mean_kb']:.0f} KB), batch {out['batch']}, img 224, train augmentation", "",
             "| data.decode | decoding on | workers | images/s | images/s per worker | images per CPU-second of the main process |",
             "|---|---|---|---|---|---|"]
    for r in out["runs"]:
        per_cpu = r["images_per_process_cpu_s"]
        per_cpu = "-" if per_cpu is None else ("(collects only)" if r["decode"] == "cpu" and r["workers"] else f"{per_cpu:.0f}")
        lines.append(f"| {r['decode']} | {r['device']} | {r['workers']} | {r['images_per_s']:.0f} | "
                     f"{r['images_per_s_per_worker']:.0f} | {per_cpu} |")
    lines += ["", "With 0 workers the main process does all the work on one thread: its images per CPU-second is the "
              "rate of one dedicated core, whatever else shares the machine. With workers, the main process only "
              "collects (PIL path) or decodes and augments (device path)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import torchvision

    from benchmarks.throughput import gpu_slug
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512, help="generated train JPEGs (4 batches of 128 by default)")
    ap.add_argument("--min-images", type=int, default=1024, help="images timed per configuration (epochs repeat)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", default="0,2", help="comma-separated worker counts to time")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "loader"))
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # the process itself works like one loader worker (DataLoader workers run with 1 torch thread); more threads
    # only oversubscribe the cores the workers need
    torch.set_num_threads(1)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    workers = [int(w) for w in args.workers.split(",") if w != ""]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_imagenet_jpegs(Path(tmp) / "imagenet", args.images)
        files = list((root / "train").rglob("*.JPEG"))
        out = {"env": {"gpu": gpu, "cpu": cpu_name(), "cores": os.cpu_count(),
                       "load_average_1min_before": os.getloadavg()[0],
                       "torch": torch.__version__, "torchvision": torchvision.__version__},
               "images": len(files), "batch": args.batch, "min_images": args.min_images, "mean_kb": sum(f.stat().st_size for f in files) / len(files) / 1024,
               "runs": []}
        for decode in ("cpu", "gpu"):
            for w in workers:
                r = measure(root, decode, w, device, batch=args.batch, min_images=args.min_images)
                print(f"decode={decode:<3} on {r['device']:<4} workers={w}: {r['images_per_s']:7.1f} images/s "
                      f"({r['images_per_s_per_worker']:.1f} per worker)", flush=True)
                out["runs"].append(r)
    slug = gpu_slug(gpu)
    out["metrics"] = {f"loader/{r['decode']}_decode/w{r['workers']}/images_per_s": r["images_per_s"] for r in out["runs"]}
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    write_results_json(dest / f"{slug}.json", out, ensure_ascii=True)
    write_text(dest / f"{slug}.md", markdown(out))
    print(markdown(out))
    print(f"wrote {dest / (slug + '.json')} and {dest / (slug + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
