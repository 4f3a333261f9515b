"""What every trainer of the project shares: torchrun set-up, atomic checkpoints with RNG states,
JSON-lines + TensorBoard logging. Imports only torch (TensorBoard when present)."""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from nm_plugins.core import is_valid_nm_mask, sparse_layers


@dataclass
class DistInfo:
    """Where this process stands in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); single process otherwise."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, numpy, torch CPU (and CUDA) RNG states as weights_only-loadable objects."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: "str | Path", state: dict) -> Path:
    """Write ``state`` with torch.save to a temporary file, then rename it over ``path`` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: "str | Path", map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (weights_only: no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)


class RunLogger:
    """JSON-lines log (``log.jsonl``) plus TensorBoard scalars in ``run_dir``; only rank 0 writes."""

    def __init__(self, run_dir: "str | Path", enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.writer = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self.writer = SummaryWriter(str(self.run_dir / "tb"))
                except ImportError:
                    self.writer = None

    def log(self, step: int, record: dict) -> None:
        """Append ``record`` (plus step and time) to log.jsonl; numeric entries also go to TensorBoard."""
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **record}
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self.writer is not None:
            for key, value in _flatten(record).items():
                if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def sad_log_entry(record: dict) -> dict:
    """The loggable part of a SADTracker record: whole-model and per-layer normalised SAD."""
    return {"sad": {"model_init": record["model"]["sad_init_norm"], "model_prev": record["model"]["sad_prev_norm"],
                    "model_init_abs": record["model"]["sad_init"], "model_prev_abs": record["model"]["sad_prev"],
                    "layers": {name: {"init": s["sad_init_norm"], "prev": s["sad_prev_norm"]}
                               for name, s in record["layers"].items()}}}


def shutdown_distributed() -> None:
    """Leave the process group cleanly: a barrier first, so that no rank tears gloo/NCCL down while another
    still talks to it (gloo aborts the late rank otherwise)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def masks_digest(model: torch.nn.Module) -> str:
    """A short hash of all N:M masks (to compare the masks of two runs)."""
    import hashlib
    h = hashlib.sha256()
    for name, layer in sparse_layers(model):
        h.update(name.encode())
        h.update(layer.mask().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def masks_valid(model: torch.nn.Module) -> float:
    """Fraction of the N:M layers whose method applies its mask and whose current mask is a valid N:M mask; 1.0
    when all are or when there is none."""
    layers = [layer for _, layer in sparse_layers(getattr(model, "module", model)) if layer.nm_method.applies_mask]
    if not layers:
        return 1.0
    return sum(bool(is_valid_nm_mask(layer.mask(), layer.pattern)) for layer in layers) / len(layers)


class StepTimes:
    """The per-step record a trainer keeps when its config asks for it (``train.step_times``): each optimizer
    step's wall seconds, from having its batch to the end of its update with the device synchronised at both
    ends, and its loss. Disabled, :meth:`start`/:meth:`stop` do nothing (no synchronisation) and :meth:`record`
    is None."""

    def __init__(self, enabled: bool, device):
        self.enabled, self.device = bool(enabled), torch.device(device)
        self.seconds: list = []
        self.loss: list = []
        self._t0 = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        """A step begins: its batch is at hand."""
        if self.enabled:
            self._sync()
            self._t0 = time.perf_counter()

    def stop(self, loss) -> None:
        """The step's update is done; ``loss`` is its training loss (a number or a one-element tensor)."""
        if self.enabled:
            self._sync()
            self.seconds.append(time.perf_counter() - self._t0)
            self.loss.append(float(loss))

    def record(self) -> "dict | None":
        """``{"seconds": [...], "loss": [...]}`` (this process's steps in order), or None when disabled."""
        return {"seconds": list(self.seconds), "loss": list(self.loss)} if self.enabled else None
