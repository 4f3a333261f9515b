"""The N:M core: pattern, mask, training methods as plugins (SR-STE, STE, ...), sparse layers, sparsify, SAD, counts. Imports only torch."""
from .checkpoint import check_sparse_state_dict
from .decay import apply_srste_decay
from .fast_inference import CudaGraphModule, to_fast_semi_structured
from .flops import count_params_flops
from .layers import DECAY_MODES, METHODS, SparseConv2d, SparseLinear, SparseMixin, build_method, sparse_layers
from .methods import NMMethod, make_method, method_names, register_method
from .mask import is_valid_nm_mask, mask_implementation, nm_mask
from .pattern import NMPattern
from .sad import SADTracker, sad
from .semi_structured import to_semi_structured
from .sparsify import SparsityReport, export_dense, find_classifier, prune_once, refresh_masks, sparsify

__all__ = [
    "NMPattern", "nm_mask", "mask_implementation", "is_valid_nm_mask", "SparseConv2d", "SparseLinear", "SparseMixin", "METHODS",
    "DECAY_MODES", "sparse_layers", "sparsify", "SparsityReport", "prune_once", "refresh_masks", "export_dense",
    "find_classifier", "sad", "SADTracker", "count_params_flops", "to_semi_structured", "apply_srste_decay",
    "check_sparse_state_dict", "to_fast_semi_structured", "CudaGraphModule", "NMMethod", "register_method",
    "make_method", "method_names", "build_method",
]
