"""Where numbers were measured, as every results.json records it."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_info() -> dict:
    """Where the numbers were measured: host, CPU, core count, torch version, GPU if any."""
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"host": platform.node(), "cpu": cpu, "cpu_cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "os": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
