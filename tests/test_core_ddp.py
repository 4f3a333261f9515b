import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_srste_decay_not_scaled_by_processes_or_micro_batches(tmp_path):
    out = tmp_path / "result.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("ddp_decay_worker.py")), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ok, diff = out.read_text().split()
    assert ok == "True", f"max difference {diff}"
