"""Export N:M Linear layers to PyTorch's 2:4 semi-structured sparse tensors (CUDA only)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import SparseLinear, sparse_layers
from .sparsify import export_dense


def to_semi_structured(model: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """A copy of ``model`` in ``dtype`` on CUDA whose N:M Linear weights are
    ``torch.sparse.SparseSemiStructuredTensor`` (2:4 tensor-core kernels); other layers stay dense.

    Raises RuntimeError without CUDA, ValueError when a sparse Linear's pattern is not 2:4 compatible.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("to_semi_structured needs a CUDA GPU (2:4 sparse tensor cores); none is available")
    names = []
    for name, layer in sparse_layers(model):
        if isinstance(layer, SparseLinear) and layer.nm_method.applies_mask:
            if not layer.pattern.tensor_core_compatible:
                raise ValueError(f"layer {name!r} has N:M pattern {layer.pattern}, which is not 2:4 compatible "
                                 "(sparse tensor cores accept 2:4, 1:4, 2:8, 1:2)")
            names.append(name)
    from torch.sparse import to_sparse_semi_structured

    out = export_dense(model).to(device="cuda", dtype=dtype).eval()
    for name in names:
        linear = out.get_submodule(name)
        linear.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
    return out
