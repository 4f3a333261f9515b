"""The authors' released ImageNet checkpoints (aojunzz/NM-sparsity, ``classification/``) in our timm layout.

What their files hold (read from their ``classification/train_imagenet.py``, ``devkit/core/utils.py``,
``classification/models/resnet.py`` and ``devkit/sparse_ops/sparse_ops.py``):

* ``torch.save({"epoch", "model": "<arch name>", "state_dict", "best_prec1", "optimizer"})`` (``model.pth-<epoch>``,
  ``model-best.pth``), or a bare state dict; keys may carry a ``module.`` prefix (a wrapped model).
* Their ``ResNetV1`` names its layers as timm's / torchvision's ResNet does (``conv1``, ``bn1``,
  ``layer<L>.<B>.conv<K>``, ``layer<L>.<B>.bn<K>``, ``layer<L>.<B>.downsample.{0,1}``, ``fc``); the classifier
  ``fc`` is a dense Linear; every conv is their ``SparseConv``, which stores only the dense weight: the N:M mask
  is recomputed from it on every forward (their ``Sparse_NHWC``: groups of M consecutive entries of the weight
  laid out as [out, kh, kw, in]). For convs whose input channels divide by M that is exactly our mask (M
  consecutive input channels at each kernel position), so our N:M layers recompute it from the loaded weights.
* Their 7x7 RGB stem ``conv1`` (3 input channels) is N:M too, with groups that span kernel positions and output
  channels (not valid 2:4 hardware groups). Our default stem is dense, so the conversion bakes their stem mask
  into the stem weight: our dense stem then computes exactly what their sparse stem computed. A model made with
  ``stem="authors"`` has an N:M stem in their grouping (``grouping="authors_flat"``): it gets their dense stem
  weight unchanged and recomputes their stem mask from it, as their ``SparseConv`` did.

:func:`convert_if_authors` returns anything that is not theirs unchanged.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

import torch

from nm_plugins.core import NMPattern, SparseMixin, nm_mask

# top-1 of the authors' model zoo (classification/README.md), for reports that compare against it
AUTHORS_ZOO_TOP1 = {("resnet50", "2:4"): 77.0, ("resnet50", "4:8"): 77.4, ("resnet50", "1:4"): 75.9,
                    ("resnet50", "2:8"): 76.4, ("resnet18", "2:4"): 71.2}
_WRAPPER_KEYS = {"epoch", "model", "state_dict", "best_prec1", "optimizer"}
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BLOCKS = {(2, 2, 2, 2): ("resnet18", "basic"), (3, 4, 6, 3): ("resnet50", "bottleneck")}
_LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


class AuthorsCheckpointError(ValueError):
    """A file recognised as the authors' layout that cannot be mapped onto our models."""


def _unwrap(obj):
    """(state_dict, wrapped) of a loaded file: the authors' training dict or the state dict itself."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) and set(obj) <= _WRAPPER_KEYS \
            and ("best_prec1" in obj or isinstance(obj.get("model"), str)):
        return obj["state_dict"], True
    return obj, False


def _strip_module(state_dict: Mapping) -> "tuple[OrderedDict, bool]":
    keys = list(state_dict)
    prefixed = bool(keys) and all(isinstance(k, str) and k.startswith("module.") for k in keys)
    if not prefixed:
        return OrderedDict(state_dict), False
    return OrderedDict((k[len("module."):], v) for k, v in state_dict.items()), True


def _looks_like_resnet(state_dict: Mapping) -> bool:
    keys = [k for k in state_dict if isinstance(k, str)]
    return ("conv1.weight" in state_dict and "fc.weight" in state_dict
            and any(_LAYER_KEY.match(k) and k.endswith(".conv1.weight") for k in keys)
            and not any(k.endswith("nm_mask") for k in keys))


def is_authors_checkpoint(obj) -> bool:
    """True for a loaded file in the authors' layout: their training dict (``state_dict`` with ``best_prec1`` /
    an architecture name) or a ``module.``-prefixed state dict, holding ResNet keys and no N:M mask buffers.
    A bare, unprefixed torchvision-style ResNet state dict is NOT detected (it is what a dense timm/torchvision
    ResNet checkpoint looks like); pass ``authors=True`` to :func:`convert_if_authors` for such a file."""
    if not isinstance(obj, Mapping):
        return False
    state_dict, wrapped = _unwrap(obj)
    if not isinstance(state_dict, Mapping):
        return False
    stripped, prefixed = _strip_module(state_dict)
    return (wrapped or prefixed) and _looks_like_resnet(stripped)


def _architecture(state_dict: Mapping) -> "tuple[str, str]":
    """(our base name, block kind) from the block counts of a ResNet state dict; error for other depths."""
    blocks = {}
    for key in state_dict:
        m = _LAYER_KEY.match(key)
        if m:
            layer, block = int(m.group(1)), int(m.group(2))
            blocks[layer] = max(blocks.get(layer, 0), block + 1)
    counts = tuple(blocks.get(i, 0) for i in range(1, 5))
    bottleneck = any(k.endswith(".conv3.weight") for k in state_dict)
    found = _BLOCKS.get(counts)
    if found is None or (found[1] == "bottleneck") != bottleneck:
        kind = "bottleneck" if bottleneck else "basic"
        raise AuthorsCheckpointError(
            f"authors' checkpoint: a ResNet with {kind} blocks {list(counts)} per stage has no nm_* model here; "
            "supported: ResNet-18 (basic [2, 2, 2, 2]) and ResNet-50 (bottleneck [3, 4, 6, 3], any width)")
    return found


def _expected_keys(counts_kind: str, state_dict: Mapping) -> set:
    """Every key their ResNetV1 of this kind has (BatchNorm's num_batches_tracked optional)."""
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{p}" for p in _BN}
    convs = ("conv1", "conv2", "conv3") if counts_kind == "bottleneck" else ("conv1", "conv2")
    blocks = (3, 4, 6, 3) if counts_kind == "bottleneck" else (2, 2, 2, 2)
    for layer, n in enumerate(blocks, start=1):
        for b in range(n):
            p = f"layer{layer}.{b}."
            for i, c in enumerate(convs, start=1):
                keys |= {p + f"{c}.weight"} | {p + f"bn{i}.{q}" for q in _BN}
            if b == 0 and (p + "downsample.0.weight") in state_dict:
                keys |= {p + "downsample.0.weight"} | {p + f"downsample.1.{q}" for q in _BN}
    return keys


def authors_stem_mask(weight: torch.Tensor, pattern: "NMPattern | str") -> torch.Tensor:
    """The mask the authors' ``SparseConv`` applies to a conv weight [out, in, kh, kw]: N largest |w| in every
    group of M consecutive entries of the weight laid out as [out, kh, kw, in] (for in % M != 0 the groups span
    kernel positions and output channels)."""
    pattern = NMPattern.parse(pattern)
    if weight.numel() % pattern.m:
        raise AuthorsCheckpointError(f"authors' checkpoint: a conv weight of shape {tuple(weight.shape)} has "
                                     f"{weight.numel()} entries, not divisible by M={pattern.m}: their SparseConv "
                                     f"could not have run it with {pattern}")
    return nm_mask(weight, pattern, grouping="authors_flat")  # what an N:M layer with stem="authors" computes


def convert_if_authors(obj, pattern: "NMPattern | str | None" = None, model: "torch.nn.Module | None" = None,
                       authors: "bool | None" = None):
    """A loaded checkpoint in our timm ``nm_resnet50_*`` / ``nm_resnet18_*`` key layout when it is the authors'
    (see :func:`is_authors_checkpoint`; ``authors=True`` forces, ``False`` skips the detection), else ``obj``
    unchanged. ``pattern`` (their N:M; required for their files) bakes their stem mask into our dense stem, unless
    ``model`` has an N:M stem in their grouping (``create_model(..., stem="authors")``): its stem then gets their
    dense weight and recomputes their mask. ``model``, when given, is checked: every key and shape must match it. Raises
    :class:`AuthorsCheckpointError` (a ValueError) for a recognised file that cannot be mapped."""
    if authors is False or (authors is None and not is_authors_checkpoint(obj)):
        return obj
    state_dict, _ = _unwrap(obj)
    if not isinstance(state_dict, Mapping):
        raise AuthorsCheckpointError(f"authors' checkpoint: expected a state dict, got {type(state_dict).__name__}")
    state_dict, _ = _strip_module(state_dict)
    if not _looks_like_resnet(state_dict):
        raise AuthorsCheckpointError("authors' checkpoint: no ResNet keys (conv1.weight, layer1.0.conv1.weight, "
                                     "fc.weight) found; only their classification ResNets can be mapped")
    if pattern is None:
        raise AuthorsCheckpointError("authors' checkpoint: pass pattern= (their N:M, e.g. '2:4'): their stem conv "
                                     "is N:M with their own grouping and its mask is baked into our dense stem")
    pattern = NMPattern.parse(pattern)
    base, kind = _architecture(state_dict)
    expected = _expected_keys(kind, state_dict)
    unknown = sorted(set(state_dict) - expected)
    missing = sorted(k for k in expected - set(state_dict) if not k.endswith("num_batches_tracked"))
    if unknown or missing:
        raise AuthorsCheckpointError(f"authors' checkpoint ({base}): keys their ResNetV1 does not have {unknown[:6]}"
                                     f"{' ...' if len(unknown) > 6 else ''}, keys it lacks {missing[:6]}"
                                     f"{' ...' if len(missing) > 6 else ''}")
    out = OrderedDict()
    for key, value in state_dict.items():
        if not torch.is_tensor(value):
            raise AuthorsCheckpointError(f"authors' checkpoint: {key} is a {type(value).__name__}, not a tensor")
        out[key] = value
    for key in expected - set(out):  # num_batches_tracked of checkpoints written before torch 0.4.1
        out[key] = torch.tensor(0, dtype=torch.long)
    stem = out["conv1.weight"]
    mask = authors_stem_mask(stem, pattern)  # also checks that their SparseConv could have run this stem
    if model is not None:
        _check_against(model, out, base)
    if not _has_authors_stem(model):
        out["conv1.weight"] = stem * mask.to(stem.dtype)
    elif model.get_submodule("conv1").pattern != pattern:
        raise AuthorsCheckpointError(f"authors' checkpoint ({pattern}): the model's stem conv1 is "
                                     f"{model.get_submodule('conv1').pattern} N:M, so it would not compute their mask")
    return out


def _has_authors_stem(model: "torch.nn.Module | None") -> bool:
    """True when ``model``'s stem conv1 is an N:M layer in the authors' grouping (their stem as they ran it)."""
    if model is None:
        return False
    stem = model.get_submodule("conv1")
    return isinstance(stem, SparseMixin) and stem.grouping == "authors_flat"


def _check_against(model: torch.nn.Module, state_dict: Mapping, base: str) -> None:
    """Raise naming the keys/shapes of ``state_dict`` that ``model`` does not have (N:M masks aside), and a
    stem that is N:M in channel groups in ``model`` (their stem mask is not one of its masks)."""
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("nm_mask")}
    unknown = sorted(set(state_dict) - set(ours))
    missing = sorted(set(ours) - set(state_dict))
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(ours[k].shape)}"
              for k in sorted(set(ours) & set(state_dict)) if tuple(state_dict[k].shape) != tuple(ours[k].shape)]
    if unknown or missing or shapes:
        raise AuthorsCheckpointError(f"authors' checkpoint ({base}) does not fit the model: not in the model "
                                     f"{unknown[:6]}, not in the file {missing[:6]}, shapes differ {shapes[:4]}")
    stem = model.get_submodule("conv1")
    if isinstance(stem, SparseMixin) and stem.nm_method.applies_mask and stem.grouping != "authors_flat":
        raise AuthorsCheckpointError("authors' checkpoint: the model's stem conv1 is an N:M layer in channel groups; "
                                     "their stem mask (groups across kernel positions) is not one of its masks: "
                                     "keep the stem dense (the default; their mask is baked in) or make it N:M in "
                                     "their grouping (create_model(..., stem='authors'))")
