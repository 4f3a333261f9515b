"""Every trainer's model takes the one fast path on CUDA: run under TRITON_INTERPRET=1 (the layers' CUDA dispatch,
Triton's interpreter on CPU tensors), the classification, mmdetection and RAFT models compute every N:M mask with
the Triton kernel — one launch per layer per optimizer step — and keep valid masks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nm_plugins as nm


def test_each_trainers_model_computes_its_masks_with_one_triton_launch_per_layer_per_step():
    pytest.importorskip("triton")
    worker = Path(__file__).with_name("fast_path_worker.py")
    proc = subprocess.run([sys.executable, str(worker)], env=dict(os.environ, TRITON_INTERPRET="1"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"classification", "mmdet", "raft"}
    for name, r in result.items():
        assert r["layers"] > 0 and r["launches"] == r["layers"], (name, r)
        assert r["implementations"] == ["triton"] and r["valid"], (name, r)


def test_without_the_interpreter_cpu_weights_use_the_c_kernel():
    impl = nm.mask_implementation(torch.empty(4, 8))
    assert impl == ("c-kernel" if nm.core.mask.mask_backend() == "kernel" else "torch")
    assert nm.mask_implementation(torch.empty(4, 8, dtype=torch.int64)) == "torch"
