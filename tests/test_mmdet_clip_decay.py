"""With mmengine's clip_grad, the SR-STE decay is part of the clipped gradient (the authors' order): the plugin's
hook adds it just before mmengine clips. A real OptimWrapper, a tiny clip norm, one step."""
import torch
from mmengine.optim import OptimWrapper

import nm_plugins as nm
from nm_plugins.mmdet.hook import _decay_before_clipping

DECAY = 0.5


def test_clipped_gradient_includes_the_decay():
    torch.manual_seed(0)
    layer = nm.SparseLinear(8, 4, bias=False, decay=DECAY)
    x = torch.randn(3, 8)
    w0, mask = layer.weight.detach().clone(), layer.mask().clone()
    full = torch.ones(4, 3) @ x + DECAY * (~mask) * w0  # SR-STE gradient
    expected = w0 - full * (0.01 / full.norm())  # clipped as a whole to norm 0.01, SGD lr 1
    wrapper = OptimWrapper(torch.optim.SGD(layer.parameters(), lr=1.0), clip_grad=dict(max_norm=0.01))
    _decay_before_clipping(wrapper)
    _decay_before_clipping(wrapper)  # wrapped once only
    wrapper.update_params(layer(x).sum())
    assert torch.allclose(layer.weight.detach(), expected, atol=1e-6)
