"""nm-sparsity: N:M fine-grained structured sparse training from scratch (SR-STE, SAD).

The core API lives in :mod:`nm_plugins.core` and is re-exported here; framework adapters are
``nm_plugins.timm``, ``nm_plugins.mmdet`` and ``nm_plugins.raft`` (imported on demand).
"""
from .core import *  # noqa: F401,F403
from .core import __all__

__version__ = "0.1.0"
