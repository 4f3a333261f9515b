"""Shared test set-up: deterministic torch, few threads (CI has 2 cores)."""
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: compiled code objects of earlier tests count against dynamo's recompile
    limit (8) and made later compile tests of the same layers fail only when run in the whole suite."""
    import sys
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny models: faster than two (and far faster on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def flying_chairs():
    """A writer of miniature FlyingChairs in the official layout: ``write(root, split, (h, w))`` puts one random
    image pair and Middlebury .flo flow per entry of ``split`` (1 = train, 2 = val) under ``root``."""
    import numpy as np
    from PIL import Image

    def write_flo(path, flow):  # Middlebury .flo: magic, width, height, then (H, W, 2) float32
        with open(path, "wb") as f:
            np.array([202021.25], np.float32).tofile(f)
            np.array([flow.shape[2], flow.shape[1]], np.int32).tofile(f)
            flow.transpose(1, 2, 0).astype(np.float32).tofile(f)

    def write(root, split, size):
        data = root / "FlyingChairs" / "data"
        data.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(1, len(split) + 1):
            for k in (1, 2):
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(data / f"{i:05d}_img{k}.ppm")
            write_flo(data / f"{i:05d}_flow.flo", rng.normal(size=(2, *size)).astype(np.float32))
        (root / "FlyingChairs" / "FlyingChairs_train_val.txt").write_text("".join(f"{s}\n" for s in split))
        return root

    return write
