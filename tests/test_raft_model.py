"""Sparse RAFT model: N:M convolutions of torchvision's RAFT, dense layers reported, weight loading."""
import pytest
import torch
from torchvision.models.optical_flow import raft_small

from nm_plugins import export_dense, is_valid_nm_mask, nm_mask, sparse_layers
from nm_plugins.raft import create, load_weights, sparsity_report

DENSE_STEMS = {"feature_encoder.convnormrelu.0", "context_encoder.convnormrelu.0",
               "update_block.motion_encoder.convflow1.0"}


def _pair(batch=1, size=128):
    return torch.rand(batch, 3, size, size) * 2 - 1, torch.rand(batch, 3, size, size) * 2 - 1


@pytest.mark.parametrize("method", ["srste", "ste"])
def test_sparse_raft_small_forward_backward_keeps_valid_masks(method):
    model = create("small", "2:4", method)
    img1, img2 = _pair()
    preds = model(img1, img2, num_flow_updates=2)
    assert len(preds) == 2 and preds[-1].shape == (1, 2, 128, 128)
    sum(p.abs().mean() for p in preds).backward()
    layers = dict(sparse_layers(model))
    assert len(layers) == len(sparsity_report(model).sparse_layers) > 40
    for name, layer in layers.items():
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, name
        assert is_valid_nm_mask(layer.mask(), layer.pattern), name
        assert torch.equal(layer.mask(), nm_mask(layer.weight, layer.pattern)), name


def test_sparse_forward_equals_masked_dense_weights():
    """The N:M model computes exactly what a plain RAFT with the masked weights computes, and not the dense one."""
    model = create("small", "2:4", "srste").eval()
    img1, img2 = _pair()
    with torch.no_grad():
        sparse_out = model(img1, img2, num_flow_updates=2)[-1]
        exported = export_dense(model)(img1, img2, num_flow_updates=2)[-1]
        for _, layer in sparse_layers(model):
            layer.set_method("dense")
        dense_out = model(img1, img2, num_flow_updates=2)[-1]
    torch.testing.assert_close(sparse_out, exported, rtol=1e-4, atol=1e-4)
    assert (sparse_out - dense_out).abs().max() > 1e-3


def test_dense_layers_are_reported_with_reasons():
    large = sparsity_report(create("large", "2:4", "srste"))
    assert set(large.dense_layers) == DENSE_STEMS
    assert large.dense_layers["feature_encoder.convnormrelu.0"] == "excluded"
    assert "keeps every weight" in large.dense_layers["update_block.motion_encoder.convflow1.0"]
    small = create("small", "2:4", "srste")
    report = sparsity_report(small)
    assert set(report.dense_layers) == DENSE_STEMS
    # raft_small's GRU takes 242 channels (hidden 96 + context 64 + motion 82): N:M with a zero-padded last group
    gru = "update_block.recurrent_block.convgru1.convz"
    assert gru in report.sparse_layers
    assert "partial group: the last 2 of 242 channels" in next(e.reason for e in report.layers if e.name == gru)
    total = sum(p.numel() for p in small.parameters())
    pruned = sum(layer.weight.numel() - int(layer.mask().sum()) for _, layer in sparse_layers(small))
    assert 0.49 < (total - pruned) / total < 0.53  # the paper's ~50% kept, not 83% as without partial groups
    assert "N:M sparsity 2:4" in str(report)


def test_dense_method_uses_the_same_layers_without_masking():
    model = create("small", "2:4", "dense")
    assert {l.method for _, l in sparse_layers(model)} == {"dense"}
    reference = raft_small(weights=None)
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("nm_mask")})
    img1, img2 = _pair()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(img1, img2, num_flow_updates=2)[-1],
                                   reference.eval()(img1, img2, num_flow_updates=2)[-1])


def test_loads_torchvision_raft_weights_from_a_local_file(tmp_path):
    reference = raft_small(weights=None)
    path = tmp_path / "raft_small.pth"
    torch.save(reference.state_dict(), path)
    model = create("small", "2:4", "srste", weights=path)
    ref_state = reference.state_dict()
    for key, value in model.state_dict().items():
        if not key.endswith("nm_mask"):
            assert torch.equal(value, ref_state[key]), key
    for name, layer in sparse_layers(model):  # masks come from the loaded weights
        assert torch.equal(layer.mask(), nm_mask(ref_state[name + ".weight"], layer.pattern)), name
    # a trainer checkpoint ({"model": state_dict} with masks) loads too
    torch.save({"model": model.state_dict(), "step": 3}, tmp_path / "ckpt.pth")
    again = load_weights(create("small", "2:4", "srste"), tmp_path / "ckpt.pth")
    assert torch.equal(again.state_dict()["context_encoder.conv.weight"], ref_state["context_encoder.conv.weight"])


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown RAFT size 'medium'"):
        create("medium")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create("small", weights=tmp_path / "nope.pth")
    torch.save(raft_small(weights=None).state_dict(), tmp_path / "small.pth")
    with pytest.raises(ValueError, match="small.pth does not fit"):
        create("large", weights=tmp_path / "small.pth")
    with pytest.raises(ValueError, match="sparsity method"):
        create("small", method="magic")
