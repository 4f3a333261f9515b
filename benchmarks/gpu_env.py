"""What every GPU benchmark shares: a wall-clock budget, the GPU's short name, the versions every figure
goes with, synchronising and freeing the device."""
from __future__ import annotations

import gc
import platform
import re
import time

import torch


class Budget:
    """Wall-clock budget for the whole run; sections skip what no longer fits."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.time(), seconds

    def left(self) -> float:
        return self.seconds - (time.time() - self.start)


def gpu_slug(name: str) -> str:
    """'NVIDIA H200' -> 'h200', 'NVIDIA A100-SXM4-80GB' -> 'a100', 'cpu' -> 'cpu'."""
    m = re.search(r"\b([ABHL]\d{2,3})\b", name.replace("-", " "))
    return m.group(1).lower() if m else re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def environment(device: torch.device) -> dict:
    """GPU name and the torch / CUDA / cuDNN / cuSPARSELt / Triton versions every figure goes with."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    try:
        env["cusparselt"] = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
    except Exception as exc:
        env["cusparselt"] = f"unknown ({type(exc).__name__})"
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1))
    else:
        env["gpu"] = "cpu"
    return env


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
