"""Model-level API: sparsify a model in place (classifier and stem found by role, layers whose weight is read
outside their own forward found by a probe forward), one-shot pruning (ASP), dense export."""
from __future__ import annotations

import copy
import fnmatch
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .layers import DECAY_MODES, DEFAULT_DECAY, SPARSE_TYPES, SparseMixin, build_method, sparse_layers
from .mask import partial_group_size
from .op import UNCHECKED_FX
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
    method_args: dict = field(default_factory=dict)  # the method's settings

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


_METADATA_CALLS = {"__get__", "size", "dim", "ndimension", "numel", "nelement", "stride", "storage_offset",
                   "element_size", "is_contiguous", "is_floating_point", "is_complex", "get_device", "data_ptr",
                   "__len__", "__repr__", "__format__"}


@dataclass
class ProbeResult:
    """What one forward of a model showed about its Conv2d/Linear layers (see :func:`probe_layers`)."""

    ran: set = field(default_factory=set)               # layers whose own forward ran
    read_directly: dict = field(default_factory=dict)   # layer -> module that used its weight outside its forward
    reads_input: list = field(default_factory=list)     # layers fed the model's input tensor itself (the stem)
    gives_output: list = field(default_factory=list)    # layers whose output the model returns (the classifier)


class _WeightReads(TorchFunctionMode):
    """Records every torch call that uses a layer's weight while that layer's own forward is not running."""

    def __init__(self, owners: dict, stack: list, reads: dict):
        super().__init__()
        self.owners, self.stack, self.reads = owners, stack, reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in _METADATA_CALLS:
            for leaf in tree_flatten((args, kwargs))[0]:
                names = self.owners.get(id(leaf)) if isinstance(leaf, torch.Tensor) else None
                if names and not any(n in self.stack for n in names):
                    for n in names:
                        self.reads.setdefault(n, self.stack[-1] if self.stack else "")
        return func(*args, **kwargs)


class _Recorder:
    """While entered: records, for every Conv2d/Linear below ``model``, whether its forward ran, whether some other
    module used its weight (see :class:`ProbeResult`), whether it was fed one of ``input_leaves``, and its outputs."""

    def __init__(self, model: nn.Module, input_leaves: list):
        self.model, self.input_leaves = model, input_leaves
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        self.owners: dict = {}
        for n, m in self.layers.items():
            self.owners.setdefault(id(m.weight), []).append(n)
        self.result, self.stack, self.outputs, self.handles, self.mode = ProbeResult(), [], [], [], None

    def _enter(self, name):
        def hook(module, args):
            self.stack.append(name)
            if name in self.layers:
                self.result.ran.add(name)
                if any(a is t for a in tree_flatten(list(args))[0] for t in self.input_leaves) \
                        and name not in self.result.reads_input:
                    self.result.reads_input.append(name)
        return hook

    def _leave(self, name):
        def hook(module, args, output):
            if self.stack and self.stack[-1] == name:
                self.stack.pop()
            if name in self.layers and isinstance(output, torch.Tensor):
                self.outputs.append((name, weakref.ref(output)))
        return hook

    def __enter__(self):
        for name, module in self.model.named_modules():
            if module is not self.model:  # the model's own hooks may be running now (see _watch_first_forward)
                self.handles.append(module.register_forward_pre_hook(self._enter(name)))
                self.handles.append(module.register_forward_hook(self._leave(name), always_call=True))
        self.mode = _WeightReads(self.owners, self.stack, self.result.read_directly)
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        for h in self.handles:
            h.remove()
        self.handles = []


def probe_layers(model: nn.Module, example_inputs, example_kwargs=None) -> ProbeResult:
    """Run ``model(*example_inputs)`` once (eval mode, no gradients, every module's mode restored) and record, for every
    Conv2d/Linear: whether its forward ran, whether some other module used its weight directly (e.g.
    ``F.linear(x, self.qkv.weight, bias)`` in the parent: the layer then computes with whatever weight the parent
    reads, never through its own forward), whether it reads the model's input, whether the model returns its output."""
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    kwargs = dict(example_kwargs or {})
    input_leaves = [t for t in tree_flatten([list(inputs), kwargs])[0] if isinstance(t, torch.Tensor)]
    modes = [(m, m.training) for m in model.modules()]  # each module's own mode (e.g. frozen norms) comes back
    _PROBING[0] += 1  # this forward is the check: watched models (see _watch_first_forward) stand by
    try:
        model.eval()
        with torch.no_grad(), _Recorder(model, input_leaves) as rec:
            out = model(*inputs, **kwargs)
        result = rec.result
        returned = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for name, ref in rec.outputs:
            t = ref()
            if t is not None and any(t is r for r in returned) and name not in result.gives_output:
                result.gives_output.append(name)
    finally:
        _PROBING[0] -= 1
        for m, training in modes:
            m.training = training
    return result


_PROBING = [0]  # probe forwards running now


def input_size_probes(model: nn.Module) -> list:
    """Random batches of one (fixed seed, the global RNG untouched) at the input size the model carries: timm's
    ``pretrained_cfg['input_size']``, preceded by its patch embedding's ``img_size`` where that differs; [] when the
    model says nothing about its input."""
    cfg = _timm_cfg(model)
    size = cfg.get("input_size") if cfg is not None else None
    if not size or len(size) != 3:
        return []
    c, h, w = size
    sizes = [(h, w)]
    embed = getattr(model, "patch_embed", None)
    img = getattr(embed, "img_size", None)
    if isinstance(img, (tuple, list)) and len(img) == 2 and tuple(img) != (h, w):
        sizes.insert(0, tuple(img))
    stem = _resolve(model, cfg.get("first_conv"))
    c = getattr(model.get_submodule(stem[0]), "in_channels", c) if stem else c  # an in_chans= kwarg
    param = next(model.parameters(), None)
    out = []
    for h, w in sizes:
        x = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(0))
        out.append(x.to(param.device, param.dtype) if param is not None and param.is_floating_point() else x)
    return out


def _auto_probe(model: nn.Module):
    """(the probe input that ran, its result) for a model carrying its input size (:func:`input_size_probes`),
    (None, None) for one that does not; ValueError when no such input runs."""
    candidates = input_size_probes(model)
    errors = []
    for x in candidates:
        try:
            return x, probe_layers(model, x)
        except Exception as err:  # noqa: BLE001 - the next size, then a clear error
            errors.append(f"{tuple(x.shape)}: {err}")
    if errors:
        raise ValueError(f"sparsify: the probe forward at the model's configured input size failed ({'; '.join(errors)}); "
                         f"pass example_inputs=<an input the model accepts> (it finds the layers whose weight the model "
                         f"reads outside their own forward)")
    return None, None


def _layer_names(model: nn.Module, module) -> list:
    """Names of the Conv2d/Linear layers in ``module`` (a submodule of ``model``), itself included."""
    names = {id(m): n for n, m in model.named_modules()}
    if not isinstance(module, nn.Module) or id(module) not in names:
        return []
    return [n for n, m in module.named_modules(prefix=names[id(module)]) if isinstance(m, (nn.Conv2d, nn.Linear))]


def _timm_cfg(model: nn.Module) -> dict | None:
    cfg = getattr(model, "pretrained_cfg", None)
    return cfg if isinstance(cfg, Mapping) else None


def _resolve(model: nn.Module, names) -> list:
    """The Conv2d/Linear layers behind timm's cfg names, also in timm's feature wrappers (``features_only``
    flattens ``stem.0`` to ``stem_0``; some wrappers hold the model as ``model``)."""
    names = [names] if isinstance(names, str) else list(names or ())
    found = []
    for name in names:
        for candidate in (name, name.replace(".", "_", 1), f"model.{name}"):
            try:
                module = model.get_submodule(candidate)
            except AttributeError:
                continue
            found += [n for n in _layer_names(model, module) if n not in found]
            break
    return found


def find_classifiers(model: nn.Module, probe: ProbeResult | None = None) -> list:
    """Names of the model's classifier layers, found by role: everything timm's ``get_classifier()`` returns (a
    distilled model's ``head`` and ``head_dist`` alike; none for ``num_classes=0``); for other timm models (e.g.
    ``features_only``) the ``pretrained_cfg['classifier']`` names that exist (usually none); otherwise the layers
    whose output the model returns (with a ``probe``), else the last nn.Linear."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        try:
            head = getter()
        except Exception:  # noqa: BLE001 - a head that cannot be asked for is no head we can find
            head = None
        heads = head if isinstance(head, (tuple, list)) else (head,)
        found = []
        for h in heads:
            found += [n for n in _layer_names(model, h) if n not in found]
        return found
    cfg = _timm_cfg(model)
    if cfg is not None:  # a timm model without get_classifier(): a features_only wrapper, its head removed
        return _resolve(model, cfg.get("classifier"))
    if probe is not None:
        return list(probe.gives_output)
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return last[-1:]


def find_classifier(model: nn.Module) -> str | None:
    """Name of the model's (first) classifier layer, or None (see :func:`find_classifiers`)."""
    found = find_classifiers(model)
    return found[0] if found else None


def find_stem(model: nn.Module, probe: ProbeResult | None = None) -> list:
    """Names of the stem layers (those that see the raw input), found by role: timm's
    ``pretrained_cfg['first_conv']`` where it names layers of the model, and (with a ``probe``) every layer fed
    the model's input tensor itself. Without either, none."""
    cfg = _timm_cfg(model)
    found = _resolve(model, cfg.get("first_conv")) if cfg is not None else []
    if probe is not None:
        found += [n for n in probe.reads_input if n not in found]
    return found


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _dense_reason(module: nn.Module, pattern: NMPattern) -> str | None:
    if type(module) not in SPARSE_TYPES:
        return f"{type(module).__name__} is not a plain Conv2d/Linear"
    if isinstance(module, nn.Conv2d) and module.groups > 1 and module.weight.shape[1] == 1:
        return "depthwise conv: one input channel per group"
    return _nothing_to_prune(module.weight.shape[1], pattern)


def _nothing_to_prune(size: int, pattern: NMPattern) -> str | None:
    """Why a layer with ``size`` input channels per group keeps every weight under ``pattern`` (None if not).
    Channels not divisible by M are fine: the last group of each row is zero-padded (see nm_mask)."""
    if size <= pattern.n:
        return f"{size} input channels <= N={pattern.n}: an N:M mask keeps every weight"
    return None


READ_DIRECTLY = "weight read directly by its parent; its forward never runs"
READ_ELSEWHERE = "weight also read outside its own forward (shared or read by its parent)"


def _let_own_forward_run(model: nn.Module, name: str) -> bool:
    """timm's BEiT / EVA / Swin-V2 attention computes ``F.linear(x, self.qkv.weight, qkv_bias)`` unless its flag
    ``qkv_bias_separate`` is set, then ``self.qkv(x) + qkv_bias`` (the same result): set it, so ``qkv``'s own
    forward (and its N:M mask) is used. True if set."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child == "qkv" and getattr(parent, "qkv_bias_separate", None) is False:
        parent.qkv_bias_separate = True
        return True
    return False


_LAYER_ONLY = ("_parameters", "_buffers", "_modules", "pattern", "method", "decay", "decay_mode", "_state", "nm_method")


def _plain(layer: nn.Module) -> nn.Module:
    """A plain nn.Conv2d / nn.Linear sharing ``layer``'s weight and bias Parameters (its mask dropped)."""
    base = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
    plain = base.__new__(base)
    nn.Module.__init__(plain)
    plain.__dict__.update({k: v for k, v in layer.__dict__.items() if k not in _LAYER_ONLY and not k.startswith("_nm_")})
    plain._parameters = {"weight": layer.weight, "bias": layer.bias}
    plain._buffers, plain._modules = {}, {}
    return plain


def sparsify(model: nn.Module, pattern="2:4", method: str = "srste", decay: float = DEFAULT_DECAY,
             exclude=(), keep_classifier_dense: bool = True, keep_stem_dense: bool = True,
             example_inputs=None, decay_mode: str = "step", method_args: "dict | None" = None) -> SparsityReport:
    """Replace, in place and keeping the weight Parameters, every nn.Conv2d / nn.Linear with its N:M counterpart
    (input channels not divisible by M: the last group is zero-padded, noted in the report); return a
    :class:`SparsityReport`. ``decay_mode``: ``"step"`` (λ_W once per optimizer step) or ``"call"`` (once per
    layer call, as the authors' code).

    Stay dense: layers that cannot be grouped, layers whose name matches a pattern in ``exclude`` (fnmatch),
    by default the classifier(s) (:func:`find_classifiers`) and the stem (:func:`find_stem`), and, when
    ``example_inputs`` (a tensor or tuple the model accepts) is given, every layer whose weight the model reads
    outside the layer's own forward (found by one forward, :func:`probe_layers`; timm's BEiT/EVA/Swin-V2
    ``qkv`` is made to run its own forward instead). Without ``example_inputs`` a model carrying its input size
    (timm's ``pretrained_cfg['input_size']``) is probed at that size; otherwise (or with ``example_inputs=False``)
    the model's next forward is watched instead and raises ValueError if it reads an N:M layer's weight outside
    the layer's forward: no forward ever computes with a dense weight counted as N:M. Layers that are already N:M get the new settings, or
    become plain dense layers again when they now stay dense.

    ``method``: any registered method name (:func:`nm_plugins.core.methods.method_names`) with its settings in
    ``method_args`` (``decay`` fills SR-STE's ``decay`` unless ``method_args`` gives it), or an
    :class:`~nm_plugins.core.methods.NMMethod` object (each layer holds its own copy).
    """
    pattern = NMPattern.parse(pattern)
    nm = build_method(method, method_args, decay)
    if decay_mode not in DECAY_MODES:
        raise ValueError(f"unknown decay_mode {decay_mode!r}: expected one of {', '.join(DECAY_MODES)}")
    if isinstance(exclude, str):
        exclude = (exclude,)
    probe = None
    if example_inputs is None:  # a model that carries its input size is probed at it
        example_inputs, probe = _auto_probe(model)
    elif example_inputs is not False:
        probe = probe_layers(model, example_inputs)
    classifiers = set(find_classifiers(model, probe)) if keep_classifier_dense else set()
    stem = set(find_stem(model, probe)) if keep_stem_dense else set()

    def reason_for(name, module):
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            return "excluded"
        if name in classifiers:
            return "classifier kept dense"
        if isinstance(module, SparseMixin):  # already N:M: only the new M can rule it out
            reason = _nothing_to_prune(module.weight.shape[1], pattern)
        else:
            reason = _dense_reason(module, pattern)
        if reason is None and name in stem:
            reason = "stem (first layer, sees the raw input) kept dense"
        return reason

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    reasons = {n: reason_for(n, m) for n, m in layers}
    notes = {}
    if probe is not None:
        enabled = [n for n in probe.read_directly
                   if reasons.get(n) is None and n not in probe.ran and _let_own_forward_run(model, n)]
        if enabled:
            probe = probe_layers(model, example_inputs)
            notes = {n: "its parent's qkv_bias_separate set, so its own forward runs" for n in enabled}
        for n in probe.read_directly:
            if reasons.get(n) is None:
                reasons[n] = READ_ELSEWHERE if n in probe.ran else READ_DIRECTLY
    report = SparsityReport(pattern, nm.name, method_args=dict(nm.settings))
    for name, module in layers:
        reason, shape = reasons[name], tuple(module.weight.shape)
        if reason is not None:
            kind = type(module).__name__
            if isinstance(module, SparseMixin):
                module.set_method("dense")  # the old layer masks nothing (and its weight guard stands down)
                _set_module(model, name, _plain(module))
                kind = "Conv2d" if isinstance(module, nn.Conv2d) else "Linear"
        else:
            base = next(b for b in SPARSE_TYPES if isinstance(module, b))
            if isinstance(module, SparseMixin):
                module.pattern = pattern
                module.set_method(nm)
                module.decay_mode = decay_mode
                module.refresh_mask()
            else:
                _set_module(model, name, SPARSE_TYPES[base].from_dense(module, pattern, nm, decay, decay_mode))
            kind = SPARSE_TYPES[base].__name__
            partial = partial_group_size(shape, pattern)
            if partial:
                notes[name] = f"partial group: the last {partial} of {shape[1]} channels zero-padded"
        report.layers.append(LayerEntry(name, kind, shape, reason is None, reason or notes.get(name, "")))
    _watch_first_forward(model, probe is None and bool(report.sparse_layers))
    return report


class FirstForwardWatch:
    """Shared by a model sparsified without a probe and its N:M layers: ``pending`` until a forward of the model
    showed that it reads no N:M layer's weight outside the layer's own forward."""

    def __init__(self):
        self.pending = True


def _watch_first_forward(model: nn.Module, watch: bool) -> None:
    """Hooks on ``model`` that check its next forward (the first after a :func:`sparsify` without a probe): a
    sparse layer whose weight the model reads outside the layer's own forward raises there (see
    :func:`_check_first_forward`), so a model is never evaluated with a dense weight counted as N:M. Its N:M layers
    refuse FX symbolic tracing (which does not call the model's hooks) until then."""
    token = FirstForwardWatch() if watch else None
    model.__dict__["_nm_watch"] = token
    for _, layer in sparse_layers(model):
        layer.__dict__["_nm_watch"] = token
    if watch and not model.__dict__.get("_nm_watching"):
        model.register_forward_pre_hook(_first_forward_pre, with_kwargs=True)
        model.register_forward_hook(_first_forward_post, always_call=True)
        model.__dict__["_nm_watching"] = True


def _first_forward_pre(model, args, kwargs):
    watch = getattr(model, "_nm_watch", None)
    if watch is not None and watch.pending and not _PROBING[0]:
        _check_first_forward(model, args, kwargs)
    return None


def _first_forward_post(model, args, output):
    recorder = getattr(model, "_nm_recorder", None)
    if recorder is not None:
        _finish_first_forward(model, recorder)
    return None


@torch.compiler.disable
def _check_first_forward(model: nn.Module, args, kwargs) -> None:
    """Record the model's first forward after an unprobed sparsify (eagerly, as it runs); under torch.compile or
    torch.jit.trace a separate eager probe forward with these inputs instead; under FX symbolic tracing (no real
    inputs) a clear error."""
    model._nm_watch.pending = False
    leaves = [t for t in tree_flatten([list(args), kwargs])[0] if isinstance(t, torch.Tensor)]
    if torch.fx._symbolic_trace.is_fx_symbolic_tracing():
        model._nm_watch.pending = True
        raise ValueError(UNCHECKED_FX)
    if torch._C._get_tracing_state() is not None:
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            _raise_if_read_around(model, probe_layers(model, args, kwargs))
        finally:
            torch._C._set_tracing_state(state)
        return
    recorder = _Recorder(model, leaves)
    recorder.args, recorder.kwargs = args, kwargs  # for the eager probe when the forward turns out opaque
    model.__dict__["_nm_recorder"] = recorder
    recorder.__enter__()


@torch.compiler.disable
def _finish_first_forward(model: nn.Module, recorder: "_Recorder") -> None:
    model.__dict__["_nm_recorder"] = None
    recorder.__exit__(None, None, None)
    probe = recorder.result
    if not probe.ran or set(_read_around(model, probe)) & probe.ran:
        # a layer seen running AND read outside its forward (or none seen running): a compiled forward, whose ops
        # run outside the module hooks' order, cannot tell; one eager probe forward decides instead
        probe = probe_layers(model, recorder.args, recorder.kwargs)
    _raise_if_read_around(model, probe)


def _read_around(model: nn.Module, probe: ProbeResult) -> list:
    """The N:M layers (method not dense) whose weight ``probe`` saw used outside their own forward, sorted."""
    sparse = {name for name, layer in sparse_layers(model) if layer.nm_method.applies_mask}
    return sorted(n for n in probe.read_directly if n in sparse)


def _raise_if_read_around(model: nn.Module, probe: ProbeResult) -> None:
    """ValueError naming the N:M layers whose weight ``probe`` saw used outside their own forward."""
    bad = _read_around(model, probe)
    if bad:
        model._nm_watch.pending = True  # every forward raises until the model is fixed
        raise ValueError(f"the N:M layer(s) {', '.join(bad)} have their weight read outside their own forward (e.g. "
                         f"F.linear(x, self.qkv.weight, ...) in the parent), so this forward computed with their dense "
                         f"weight while they are counted N:M. sparsify() was given no example input to find them: "
                         f"call sparsify(model, ..., example_inputs=<an input>) (such layers are kept dense, timm's "
                         f"qkv made to run its own forward), or exclude them")


def prune_once(model: nn.Module, pattern="2:4", exclude=(), keep_classifier_dense: bool = True,
               keep_stem_dense: bool = True, example_inputs=None) -> SparsityReport:
    """ASP baseline: one-shot magnitude N:M masks from the model's current (trained) weights, frozen for
    ``fixed`` fine-tuning (pruned weights get zero gradient and stay masked). Arguments as :func:`sparsify`."""
    report = sparsify(model, pattern, method="fixed", decay=0.0, exclude=exclude,
                      keep_classifier_dense=keep_classifier_dense, keep_stem_dense=keep_stem_dense,
                      example_inputs=example_inputs)
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
            if not layer.nm_method.applies_mask:
                weight = layer.weight
            elif layer._nm_builtin:
                weight = layer.weight * layer.mask()
            else:
                weight = layer.masked_weight()
        plain = base.__new__(base)
        nn.Module.__init__(plain)
        plain.__dict__.update({k: v for k, v in layer.__dict__.items() if k not in _LAYER_ONLY and not k.startswith("_nm_")})
        plain._parameters = {"weight": nn.Parameter(weight.detach().clone(), layer.weight.requires_grad),
                             "bias": layer.bias}
        plain._buffers, plain._modules = {}, {}
        _set_module(out, name, plain)
    return out
