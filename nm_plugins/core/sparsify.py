"""Model-level API: sparsify a model in place, one-shot pruning (ASP), dense export."""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .layers import DEFAULT_DECAY, METHODS, SPARSE_TYPES, SparseMixin, sparse_layers
from .pattern import NMPattern


@dataclass
class LayerEntry:
    """One Conv2d/Linear layer of a sparsified model: where it is, its weight shape, and its fate."""

    name: str
    kind: str
    shape: tuple
    sparse: bool
    reason: str


@dataclass
class SparsityReport:
    """What :func:`sparsify` did: every Conv2d/Linear layer, sparse or left dense with the reason."""

    pattern: NMPattern
    method: str
    layers: list = field(default_factory=list)

    @property
    def sparse_layers(self) -> list:
        """Names of the layers made N:M."""
        return [e.name for e in self.layers if e.sparse]

    @property
    def dense_layers(self) -> dict:
        """{name: reason} of the layers left dense."""
        return {e.name: e.reason for e in self.layers if not e.sparse}

    def __str__(self) -> str:
        head = ("layer", "type", "weight shape", "N:M", "note")
        rows = [(e.name, e.kind, "x".join(map(str, e.shape)), str(self.pattern) if e.sparse else "dense", e.reason)
                for e in self.layers]
        widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
        fmt = "  ".join("{:<%d}" % w for w in widths)
        lines = [f"N:M sparsity {self.pattern} ({self.method}): {len(self.sparse_layers)} sparse, "
                 f"{len(self.dense_layers)} dense layers", fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r) for r in rows]
        return "\n".join(lines)


def find_classifier(model: nn.Module) -> str | None:
    """Name of the model's final classifier: timm's ``get_classifier()`` if present, else the last nn.Linear."""
    names = {id(m): n for n, m in model.named_modules()}
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        try:
            head = getter()
        except Exception:  # some models raise when asked without a head
            head = None
        if isinstance(head, nn.Module) and id(head) in names:
            for name, m in head.named_modules(prefix=names[id(head)]):
                if isinstance(m, nn.Linear) or isinstance(m, nn.Conv2d):
                    return name
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return last


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _dense_reason(module: nn.Module, pattern: NMPattern) -> str | None:
    if type(module) not in SPARSE_TYPES:
        return f"{type(module).__name__} is not a plain Conv2d/Linear"
    if isinstance(module, nn.Conv2d) and module.groups > 1 and module.weight.shape[1] == 1:
        return "depthwise conv: one input channel per group"
    size = module.weight.shape[1]
    if size % pattern.m != 0:
        return f"{size} input channels not divisible by M={pattern.m}"
    return None


def sparsify(model: nn.Module, pattern="2:4", method: str = "srste", decay: float = DEFAULT_DECAY,
             exclude=(), keep_classifier_dense: bool = True) -> SparsityReport:
    """Replace, in place and keeping the weight Parameters, every nn.Conv2d / nn.Linear whose input-channel
    axis is divisible by M with its N:M counterpart; return a :class:`SparsityReport`.

    Layers that cannot be grouped, layers whose name matches a pattern in ``exclude`` (fnmatch), and (by
    default) the final classifier stay dense. Layers that are already N:M get the new pattern's settings.
    """
    pattern = NMPattern.parse(pattern)
    if method not in METHODS:
        raise ValueError(f"unknown sparsity method {method!r}: expected one of {', '.join(METHODS)}")
    if isinstance(exclude, str):
        exclude = (exclude,)
    classifier = find_classifier(model) if keep_classifier_dense else None
    report = SparsityReport(pattern, method)
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        kind = type(module).__name__
        shape = tuple(module.weight.shape)
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            reason = "excluded"
        elif name == classifier:
            reason = "classifier kept dense"
        else:
            reason = _dense_reason(module, pattern) if not isinstance(module, SparseMixin) else None
            if isinstance(module, SparseMixin) and module.weight.shape[1] % pattern.m:
                reason = f"{module.weight.shape[1]} input channels not divisible by M={pattern.m}"
        if reason is None:
            base = next(b for b in SPARSE_TYPES if isinstance(module, b))
            if isinstance(module, SparseMixin):
                module.pattern = pattern
                module.set_method(method, decay)
                module.refresh_mask()
            else:
                _set_module(model, name, SPARSE_TYPES[base].from_dense(module, pattern, method, decay))
            kind = SPARSE_TYPES[base].__name__
        report.layers.append(LayerEntry(name, kind, shape, reason is None, reason or ""))
    return report


def prune_once(model: nn.Module, pattern="2:4", exclude=(), keep_classifier_dense: bool = True) -> SparsityReport:
    """ASP baseline: one-shot magnitude N:M masks from the model's current (trained) weights, frozen for
    ``fixed`` fine-tuning (pruned weights get zero gradient and stay masked)."""
    report = sparsify(model, pattern, method="fixed", decay=0.0, exclude=exclude,
                      keep_classifier_dense=keep_classifier_dense)
    with torch.no_grad():
        for _, layer in sparse_layers(model):
            layer.weight.mul_(layer.refresh_mask())  # the frozen mask is kept; pruned weights become 0
    return report


def refresh_masks(model: nn.Module) -> None:
    """Recompute every N:M layer's mask from its current weight (after editing weights by hand)."""
    for _, layer in sparse_layers(model):
        layer.refresh_mask()


def export_dense(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A model with plain nn.Conv2d / nn.Linear holding the masked weights (zeros where pruned)."""
    out = model if inplace else copy.deepcopy(model)
    for name, layer in list(sparse_layers(out)):
        base = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
        with torch.no_grad():
            weight = layer.weight if layer.method == "dense" else layer.weight * layer.mask()
        plain = base.__new__(base)
        nn.Module.__init__(plain)
        plain.__dict__.update({k: v for k, v in layer.__dict__.items()
                               if k not in ("_parameters", "_buffers", "_modules", "pattern", "method", "decay", "_state")})
        plain._parameters = {"weight": nn.Parameter(weight.detach().clone(), layer.weight.requires_grad),
                             "bias": layer.bias}
        plain._buffers, plain._modules = {}, {}
        _set_module(out, name, plain)
    return out
