"""Plain sparsify never leaves a layer counted N:M that the model reads around: a model carrying its input size
(timm's pretrained_cfg) is probed at it; any other model's next forward is watched and raises."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from nm_plugins.core import export_dense, sparse_layers, sparsify

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")

SMALL = {
    "eva02_tiny_patch14_224": dict(depth=1),
    "beit_base_patch16_224": dict(depth=1, embed_dim=64, num_heads=2),
    "swinv2_tiny_window8_256": dict(depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 1, 2, 2)),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_plain_sparsify_on_models_reading_qkv_weight_evaluates_sparse(name):
    """Without example_inputs the qkv layers were reported 2:4 while their parents computed with the dense weight:
    features differed from export_dense(model) (0.4% EVA02, 0.2% BEiT, 82% Swin-V2)."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0, **SMALL[name]).eval()
    with torch.no_grad():  # Swin-V2 zero-initialises its post-norms: no attention branch would reach the output
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.05)
    report = sparsify(model, "2:4")
    qkv = [e for e in report.layers if e.name.endswith("attn.qkv")]
    assert qkv and all(e.sparse for e in qkv)
    x = torch.randn(1, 3, *model.pretrained_cfg["input_size"][1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), export_dense(model)(x), rtol=1e-5, atol=1e-5)


class ReadsAround(nn.Module):
    """A parent computing with its child's weight directly (as timm's BEiT attention does without its flag)."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 16)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.proj(F.linear(x, self.qkv.weight, self.qkv.bias)))


def test_unprobed_model_raises_at_every_forward_that_reads_around_a_sparse_layer():
    model = ReadsAround()
    report = sparsify(model, "2:4")  # no input size known, no example: the next forward is watched
    assert "qkv" in report.sparse_layers
    for _ in range(2):  # not only the first call: the model stays refused until fixed
        with pytest.raises(ValueError, match=r"(?s)qkv.*example_inputs"):
            model(torch.randn(2, 16))
    sparsify(model, "2:4", example_inputs=torch.randn(2, 16))
    assert "qkv" not in {n for n, _ in sparse_layers(model)}
    model(torch.randn(2, 16))


def test_watched_first_forward_passes_for_a_sound_model_and_under_tracing():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    sparsify(model, "2:4", keep_classifier_dense=False)
    x = torch.randn(2, 16)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)  # the check runs a probe outside the trace
        assert torch.equal(traced(x), model(x))
    bad = ReadsAround()
    sparsify(bad, "2:4")
    with pytest.raises(ValueError, match="qkv"), torch.no_grad():
        torch.jit.trace(bad, x)
    with pytest.raises(ValueError, match="FX symbolic trace"):
        torch.fx.symbolic_trace(_sparse_reads_around())


def _sparse_reads_around():
    model = ReadsAround()
    sparsify(model, "2:4")
    return model


def test_example_inputs_false_still_watches():
    model = ReadsAround()
    sparsify(model, "2:4", example_inputs=False)
    with pytest.raises(ValueError, match="qkv"):
        model(torch.randn(2, 16))
