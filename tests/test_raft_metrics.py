"""Flow metrics on known flows, RAFT's sequence loss and the evaluation padding."""
import math

import pytest
import torch

from nm_plugins.raft.evaluate import pad_to_multiple, unpad
from nm_plugins.raft.metrics import FlowMetrics, sequence_loss


def _flow(h=4, w=6, value=(0.0, 0.0), batch=1):
    return torch.tensor(value, dtype=torch.float32).view(1, 2, 1, 1).expand(batch, 2, h, w).clone()


def test_constant_error_gives_exact_epe_and_thresholds():
    metrics = FlowMetrics()
    metrics.update(_flow(value=(3.0, 4.0)), _flow())  # every pixel off by exactly 5 px
    out = metrics.compute()
    assert out["epe"] == pytest.approx(5.0) and out["per_image_epe"] == pytest.approx(5.0)
    assert out["1px"] == 0 and out["3px"] == 0 and out["5px"] == 0  # "below 5 px" is strict
    m2 = FlowMetrics()
    m2.update(_flow(value=(1.2, 1.6)), _flow())  # 2 px
    assert m2.compute()["epe"] == pytest.approx(2.0)
    assert (m2.compute()["1px"], m2.compute()["3px"], m2.compute()["5px"]) == (0.0, 100.0, 100.0)


def test_mixed_errors_valid_mask_and_per_image_average():
    gt = _flow(h=2, w=2, batch=2)
    pred = gt.clone()
    pred[0, 0, 0, :] = 10.0  # image 0: two of four pixels off by 10 px
    pred[1, 1, :, :] = 0.5   # image 1: all pixels off by 0.5 px ...
    valid = torch.ones(2, 2, 2, dtype=torch.bool)
    valid[1, 0, :] = False   # ... of which only two count
    metrics = FlowMetrics()
    metrics.update(pred, gt, valid)
    out = metrics.compute()
    assert out["epe"] == pytest.approx((20 + 1.0) / 6)        # pixel average over 6 valid pixels
    assert out["per_image_epe"] == pytest.approx((5 + 0.5) / 2)  # image average (KITTI's EPE)
    assert out["1px"] == pytest.approx(100 * 4 / 6)
    assert out["images"] == 2


def test_fl_all_counts_kitti_outliers():
    gt = _flow(h=1, w=4, value=(100.0, 0.0))
    pred = gt.clone()
    pred[0, 0, 0, 0] += 4.0   # > 3 px but 4% of |flow|: not an outlier
    pred[0, 0, 0, 1] += 6.0   # > 3 px and 6%: outlier
    pred[0, 0, 0, 2] += 2.0   # < 3 px: not an outlier
    metrics = FlowMetrics()
    metrics.update(pred, gt)
    assert metrics.compute()["fl_all"] == pytest.approx(25.0)


def test_metrics_reject_bad_shapes_and_empty_input():
    with pytest.raises(ValueError, match="one shape"):
        FlowMetrics().update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="no valid pixels"):
        FlowMetrics().compute()


def test_sequence_loss_weights_updates_by_gamma_and_ignores_huge_flow():
    gt = _flow(h=2, w=2)
    gt[0, :, 1, 1] = 500.0  # beyond max_flow: ignored
    preds = [gt + 2.0, gt + 1.0]
    valid = torch.ones(1, 2, 2)
    loss, stats = sequence_loss(preds, gt, valid, gamma=0.8, max_flow=400.0)
    # L1 over 2 channels of 3 counted pixels, mean over all 8 entries
    expected = 0.8 * (2.0 * 6 / 8) + 1.0 * (1.0 * 6 / 8)
    assert loss.item() == pytest.approx(expected)
    assert stats["epe"] == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError):
        sequence_loss([], gt, valid)


@pytest.mark.parametrize("mode", ["sintel", "kitti"])
def test_padding_round_trip(mode):
    img = torch.randn(2, 3, 37, 50)
    p1, p2, pad = pad_to_multiple(img, img, 8, mode)
    assert p1.shape[-2] % 8 == 0 and p1.shape[-1] % 8 == 0
    assert torch.equal(unpad(p1, pad), img)
