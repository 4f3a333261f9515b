import pytest
import timm
import torch
import torch.nn as nn

from nm_plugins import SADTracker, SparseLinear, count_params_flops, sad, sparsify


def test_sad_on_known_pairs():
    a = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    assert sad(a, a) == 0
    assert sad(a, ~a) == 8
    b = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)
    assert sad(a, b) == 2
    assert sad(a.int(), b.float()) == 2


def test_sad_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(4, 2\)"):
        sad(torch.ones(2, 4), torch.ones(4, 2))


def test_tracker_counts_flips_per_layer_and_model():
    model = nn.Sequential(SparseLinear(4, 1, bias=False), SparseLinear(8, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    tracker = SADTracker(model)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 3.0, 2.0, 4.0]]))  # 4 flips
    r1 = tracker.record()
    assert r1["layers"]["0"]["sad_init"] == 2 and r1["layers"]["0"]["sad_prev"] == 2
    assert r1["layers"]["0"]["sad_init_norm"] == 0.5
    assert r1["layers"]["1"]["sad_init"] == 0
    assert r1["model"]["sad_init"] == 2 and r1["model"]["numel"] == 20
    assert r1["model"]["sad_init_norm"] == pytest.approx(0.1)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))  # back to the start
    r2 = tracker.record()
    assert r2["layers"]["0"]["sad_init"] == 0 and r2["layers"]["0"]["sad_prev"] == 2
    assert len(tracker.history) == 2


def test_tracker_stages_and_state_roundtrip():
    model = timm.create_model("resnet18", num_classes=10)
    sparsify(model, "2:4")
    tracker = SADTracker(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    record = tracker.record()
    assert record["model"]["sad_init"] > 0
    stages = SADTracker.by_stage(record)
    assert set(stages) == {"layer1", "layer2", "layer3", "layer4"}
    assert sum(s["sad_init"] for s in stages.values()) == record["model"]["sad_init"]
    restored = SADTracker(model)
    restored.load_state_dict(tracker.state_dict())
    assert restored.record()["model"]["sad_init"] == record["model"]["sad_init"]


def test_tracker_needs_sparse_layers():
    with pytest.raises(ValueError, match="no N:M layers"):
        SADTracker(nn.Linear(4, 4))


@pytest.mark.parametrize("pattern,params_m,gflops", [
    (None, 25.6, 4.09),   # paper: dense
    ("2:4", 13.8, 2.10),  # paper prints 13.8M / 2.15G (see README on the FLOP gap)
    ("1:4", 7.93, 1.11),  # paper prints 7.93M / 1.17G
    ("2:8", 7.93, 1.11),
])
def test_resnet50_params_and_flops(pattern, params_m, gflops):
    model = timm.create_model("resnet50")
    if pattern:
        sparsify(model, pattern)
    params, flops = count_params_flops(model, (1, 3, 224, 224))
    assert params / 1e6 == pytest.approx(params_m, rel=0.01)
    assert flops / 1e9 == pytest.approx(gflops, abs=0.005)


def test_counts_only_kept_weights_of_a_linear():
    layer = SparseLinear(8, 4, bias=True, pattern="1:4")
    params, flops = count_params_flops(nn.Sequential(layer), (3, 8))
    assert params == 8 + 4  # 2 kept weights of 8 per row, 4 rows, plus the bias
    assert flops == 8
