"""Parameter and FLOP counts that count only the weights an N:M mask keeps."""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import SparseMixin


def _kept_weights(module: nn.Module) -> int:
    if isinstance(module, SparseMixin) and module.nm_method.applies_mask:
        return int(module.mask().sum())
    return module.weight.numel()


def count_params_flops(model: nn.Module, input_size=(1, 3, 224, 224), forward=None,
                       by_module: dict | None = None) -> tuple[int, int]:
    """(params, flops): parameters with pruned N:M weights left out, and multiply-accumulates of all
    Conv2d/Linear layers for one forward of a zero tensor of ``input_size`` (kept weights only), divided by
    the batch size ``input_size[0]``.

    ``forward(model, x)`` runs the model on that tensor when ``model(x)`` does not (a whole detector needs its
    data samples; see ``nm_plugins.mmdet.flops``). Every Conv2d/Linear call counts, also a layer called several
    times. ``by_module``, a dict, receives the FLOPs of each Conv2d/Linear by module name. Convention: one
    FLOP = one multiply-accumulate of a conv/linear weight, as in the paper's dense ResNet-50 figure (4.09G);
    biases, norms, activations, pooling and additions are not counted.
    """
    params = 0
    pruned = {}
    for module in model.modules():
        if isinstance(module, SparseMixin) and module.nm_method.applies_mask:
            pruned[id(module.weight)] = module.weight.numel() - _kept_weights(module)
    seen = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            params += p.numel() - pruned.get(id(p), 0)

    flops = 0
    per_module: dict = {}
    names = {id(m): n for n, m in model.named_modules()}

    def hook(module, inputs, output):
        nonlocal flops
        kept = _kept_weights(module)
        if isinstance(module, nn.Conv2d):
            macs = kept * output.shape[0] * output.shape[-1] * output.shape[-2]
        else:  # Linear: one pass of the weight per output row
            macs = kept * (output.numel() // output.shape[-1])
        flops += macs
        per_module[names[id(module)]] = per_module.get(names[id(module)], 0) + macs

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters(), None)
        x = torch.zeros(input_size, device=p.device if p is not None else "cpu")
        with torch.no_grad():
            model(x) if forward is None else forward(model, x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    batch = max(input_size[0] if len(input_size) else 1, 1)
    if by_module is not None:
        by_module.update({name: macs // batch for name, macs in per_module.items()})
    return params, flops // batch
