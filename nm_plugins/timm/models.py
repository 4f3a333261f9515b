"""N:M timm models: the generic ``create_model`` and the registered ``nm_*`` names of the paper's table."""
from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import timm
import timm.data
import torch
import torch.nn as nn
from timm.models import (build_model_with_cfg, generate_default_cfgs, get_arch_pretrained_cfgs, get_pretrained_cfg,
                         load_checkpoint, register_model)
from timm.models import load_state_dict as timm_load_state_dict
from timm.models.resnet import Bottleneck, ResNet

from nm_plugins.core import (NMPattern, SparseMixin, SparsityReport, build_method, check_sparse_state_dict,
                             is_valid_nm_mask, method_names, prune_once, sparse_layers, sparsify)
from nm_plugins.core.layers import SPARSE_TYPES
from nm_plugins.core.mask import check_groupable
from nm_plugins.core.sparsify import READ_DIRECTLY, READ_ELSEWHERE, find_stem, probe_layers

try:  # the authors' released checkpoints (their layout) are converted on load
    from .authors import convert_if_authors
except ImportError:  # pragma: no cover - authors.py is optional
    convert_if_authors = None

PAPER_PATTERNS = ("2:4", "4:8", "1:4", "2:8")
# timm architecture + extra kwargs behind each registered base name.
BASES = {
    "resnet50": ("resnet50", {}),
    "resnet50x1_25": ("resnet50x1_25", {}),
    "resnet18": ("resnet18", {}),
}
# stem=: dense (default), nm (the core's channel groups, the last one zero-padded), authors (their flattened groups)
STEMS = ("dense", "nm", "authors")
AUTHORS_STEM_NOTE = "stem N:M in the authors' grouping: M consecutive weights of [out, kh, kw, in]"


def create_model(name: str, pattern="2:4", method: str = "srste", decay: float = 2e-4, exclude=(),
                 keep_classifier_dense: bool = True, stem: "str | None" = None,
                 checkpoint_path: "str | Path | None" = None, probe_input=None,
                 keep_stem_dense: "bool | None" = None, method_args: "dict | None" = None,
                 **timm_kwargs) -> nn.Module:
    """timm.create_model(name, **timm_kwargs) with every groupable Conv2d/Linear made N:M; the classifier(s)
    (timm's ``get_classifier()``, e.g. DeiT's ``head`` and ``head_dist``; none for ``num_classes=0`` or
    ``features_only``) stay dense, and so does the stem (``pretrained_cfg['first_conv']``, the layers fed the
    input) by default.

    ``stem``: ``"dense"`` (default), ``"nm"`` (N:M like the other layers: M consecutive input channels, the last
    group zero-padded: hardware-valid) or ``"authors"`` (N:M in the authors' grouping, ``grouping="authors_flat"``:
    M consecutive weights of the weight laid out [out, kh, kw, in], spanning kernel positions; not hardware N:M;
    the stem's weight count must divide by M). ``keep_stem_dense=True/False`` is the older spelling of
    ``stem="dense"/"nm"``.

    ``method`` is any registered N:M method (:func:`nm_plugins.core.method_names`: srste, ste, dense, fixed,
    ``asp`` = dense training until :func:`asp_prune`, ...), its settings in ``method_args``.
    ``probe_input``: the input of one probe forward (default: a random batch of one at 64x64 for models that
    take any size, else at the configured input size, ``img_size``/``in_chans`` honoured) that finds the stem, and the layers whose weight the model
    reads outside their own forward (kept dense; timm's BEiT/EVA/Swin-V2 ``qkv`` is made to run its own
    forward); ``False`` skips it. ``checkpoint_path``: a local file (see :func:`load_local_checkpoint`) loaded
    after sparsification. The model gets ``nm_config`` (pattern, method, decay, stem; ``method_args``: the method's
    settings, when ``method_args`` was given) and ``nm_report``.
    """
    if method not in method_names():
        raise ValueError(f"unknown N:M method {method!r}: expected one of {', '.join(method_names())}")
    build_method(method, method_args, decay)  # its settings checked before the model is built
    stem = _resolve_stem(stem, keep_stem_dense)
    pattern = NMPattern.parse(pattern)
    layer_method = "dense" if method == "asp" else method
    model = timm.create_model(name, **timm_kwargs)
    candidates = _default_probe_inputs(model, timm_kwargs) if probe_input is None else [probe_input]
    for i, probe in enumerate(candidates):
        try:
            stem_layers = []
            if stem == "authors":  # found before sparsify, by role (also where N:M channel groups keep it all)
                stem_layers = find_stem(model, None if probe is False else probe_layers(model, probe))
            report = sparsify(model, pattern, layer_method, decay, exclude=exclude, method_args=method_args,
                              keep_classifier_dense=keep_classifier_dense, keep_stem_dense=stem != "nm",
                              example_inputs=probe)
            break
        except Exception as err:
            if probe is False:
                raise
            if i + 1 < len(candidates):
                continue  # the 64x64 probe was too small for this model: the configured size next
            shapes = [tuple(t.shape) for t in (probe if isinstance(probe, (tuple, list)) else [probe])]
            raise ValueError(f"create_model({name!r}): the probe forward with input of shape {shapes} failed "
                             f"({err}); pass probe_input=<an input the model accepts>, or probe_input=False to skip "
                             f"it (layers whose weight the model reads directly are then not found)") from err
    if stem == "authors":
        _make_authors_stem(model, name, report, stem_layers, pattern, layer_method, decay, method_args)
    model.nm_config = {"pattern": str(pattern), "method": method, "decay": decay if method == "srste" else 0.0,
                       "stem": stem}
    if method_args:  # the method's full settings, when any were given
        model.nm_config["method_args"] = dict(report.method_args)
    model.nm_report = report
    model.register_load_state_dict_pre_hook(_check_on_load)
    if checkpoint_path is not None:
        load_local_checkpoint(model, checkpoint_path)
    return model


def _resolve_stem(stem: "str | None", keep_stem_dense: "bool | None") -> str:
    """The ``stem`` choice of :func:`create_model`, ``keep_stem_dense`` (older spelling) folded in."""
    if stem is not None and stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}: expected 'dense' (kept dense), 'nm' (N:M channel groups, the last "
                         f"zero-padded) or 'authors' (N:M in the authors' flattened [out, kh, kw, in] groups)")
    if keep_stem_dense is None:
        return stem or "dense"
    implied = "dense" if keep_stem_dense else "nm"
    if stem is not None and stem != implied:
        raise ValueError(f"create_model: keep_stem_dense={keep_stem_dense} contradicts stem={stem!r}; pass stem= only")
    return implied


def _make_authors_stem(model: nn.Module, model_name: str, report: SparsityReport, stem_layers: list,
                       pattern: NMPattern, method: str, decay: float, method_args: "dict | None" = None) -> None:
    """Make the stem layers (dense after sparsify) N:M with ``grouping="authors_flat"``, in place; excluded,
    classifier and directly-read layers keep their reason. The report says so."""
    entries = {e.name: e for e in report.layers}
    keep = ("excluded", "classifier kept dense", READ_DIRECTLY, READ_ELSEWHERE)
    made = []
    for name in stem_layers:
        module, entry = model.get_submodule(name), entries.get(name)
        if entry is None or entry.sparse or entry.reason in keep or type(module) not in SPARSE_TYPES:
            continue
        try:
            check_groupable(module.weight.shape, pattern, "authors_flat")
        except ValueError as err:
            raise ValueError(f"create_model({model_name!r}, stem='authors'): the stem layer {name!r}: {err}; use "
                             f"stem='nm' (channel groups, the last one zero-padded) or stem='dense'") from None
        new = SPARSE_TYPES[type(module)].from_dense(module, pattern, method, decay, grouping="authors_flat",
                                                    method_args=method_args)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        entry.kind, entry.sparse, entry.reason = type(new).__name__, True, AUTHORS_STEM_NOTE
        made.append(name)
    if not made:
        raise ValueError(f"create_model({model_name!r}, stem='authors'): no stem layer to make N:M (found "
                         f"{stem_layers or 'none'}; without timm metadata pass probe_input=, not False)")


def _note_authors_groupings(model: nn.Module, report: SparsityReport) -> None:
    """Report entries of layers in the authors' grouping get that note (not the core's partial-group note)."""
    for entry in report.layers:
        module = model.get_submodule(entry.name)
        if entry.sparse and getattr(module, "grouping", "channels") == "authors_flat":
            entry.reason = AUTHORS_STEM_NOTE


def _default_probe_inputs(model: nn.Module, timm_kwargs: dict) -> list:
    """Random batches of one at the model's configured input size (``img_size`` / ``in_chans`` kwargs win),
    preceded by a cheaper 64x64 one unless the model's cfg says its input size is fixed."""
    cfg = timm.data.resolve_model_data_config(model)
    c, h, w = cfg["input_size"]
    c = timm_kwargs.get("in_chans", c)
    size = timm_kwargs.get("img_size")
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
    sizes = [(h, w)]
    fixed = (getattr(model, "pretrained_cfg", None) or {}).get("fixed_input_size", False)
    if not fixed and size is None and max(h, w) > 64:
        sizes.insert(0, (min(h, 64), min(w, 64)))
    param = next(model.parameters(), None)
    out = []
    for h, w in sizes:
        x = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(0))  # the global RNG stays untouched
        out.append(x.to(param.device, param.dtype) if param is not None and param.is_floating_point() else x)
    return out


def _check_on_load(module, state_dict, prefix, *_):
    """load_state_dict pre-hook of models made by :func:`create_model`: a sparse state_dict must not load
    silently into layers that are dense here (``strict=False`` would give the unmasked master weights), nor its
    masks of one grouping into layers of the other (a stem="authors" checkpoint into a stem="nm" model). Inside
    timm's own ``load_checkpoint`` (``timm.create_model(name, checkpoint_path=...)``) the file is read as
    :func:`load_local_checkpoint` reads it (the authors' files converted, their stem mask included)."""
    path = _timm_checkpoint_path() if not prefix else None
    if path is not None:
        ours = read_local_checkpoint(module, path)
        state_dict.clear()
        state_dict.update(ours)
    own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    check_sparse_state_dict(module, own)
    _check_groupings(module, own)


def _check_groupings(model: nn.Module, state_dict: Mapping) -> None:
    """Raise ValueError naming the N:M layers whose saved mask is a mask of the other grouping, not of theirs
    (only layers whose input channels do not divide by M can tell the two groupings apart)."""
    wrong = []
    for name, layer in sparse_layers(model):
        mask = state_dict.get(f"{name}.nm_mask" if name else "nm_mask")
        if not torch.is_tensor(mask) or mask.shape != layer.weight.shape or not layer.weight.shape[1] % layer.pattern.m:
            continue
        other = "channels" if layer.grouping == "authors_flat" else "authors_flat"
        if not layer.mask_is_valid(mask) and is_valid_nm_mask(mask, layer.pattern, other):
            wrong.append(f"{name} (saved in grouping {other}, here {layer.grouping})")
    if wrong:
        raise ValueError(f"this state_dict's N:M masks use another grouping than the model's layers: "
                         f"{', '.join(wrong)}; its weights were trained with the other masks. Create the model with "
                         f"the stem= the checkpoint was trained with ('authors': their flattened groups, 'nm': "
                         f"channel groups)")


def _unwrap(obj) -> Mapping:
    """The state dict inside a loaded file (``{"state_dict"|"model": ...}`` or itself), ``module.`` prefixes
    (DataParallel / DDP) removed, as timm's own loader does."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"the checkpoint holds a {type(obj).__name__}, not a state dict")
    return {(k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k): v for k, v in obj.items()}


def _timm_checkpoint_path() -> "str | None":
    """The file timm's own ``load_checkpoint`` is loading now (it calls ``model.load_state_dict`` with a state
    dict that no longer says whose layout it was in), or None outside it."""
    code = load_checkpoint.__code__  # timm.models.load_checkpoint, the one timm.create_model calls
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            path = frame.f_locals.get("checkpoint_path")
            return str(path) if path is not None else None
        frame = frame.f_back
    return None


def load_local_checkpoint(model: nn.Module, path: "str | Path", strict: bool = True) -> nn.Module:
    """Load a local checkpoint file into ``model``: a timm/torchvision state dict, ``{"model"|"state_dict": ...}``,
    a trainer checkpoint of this project, or the paper authors' released ResNet files (converted by
    :mod:`nm_plugins.timm.authors`). N:M masks missing from it follow the weights; masks for layers that are
    dense in ``model`` raise ValueError (export the checkpoint dense first, or sparsify the model alike)."""
    path = Path(path)
    if path.suffix in (".npz", ".npy"):  # timm's numpy (big_vision) checkpoints: the model's own loader
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} does not exist (only local files are loaded)")
        load_checkpoint(model, str(path), strict=strict)
        return model
    state_dict = read_local_checkpoint(model, path)
    check_sparse_state_dict(model, state_dict)
    _check_groupings(model, state_dict)
    model.load_state_dict(state_dict, strict=strict)
    return model


def read_local_checkpoint(model: nn.Module, path: "str | Path") -> dict:
    """The state dict that :func:`load_local_checkpoint` loads from ``path`` into ``model`` (wrappers and
    ``module.`` prefixes removed, the authors' files converted for ``model``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist (only local files are loaded, no downloads)")
    if path.suffix == ".safetensors":
        obj = timm_load_state_dict(str(path), use_ema=False)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if convert_if_authors is not None:
        pattern = getattr(model, "nm_config", {}).get("pattern")
        converted = convert_if_authors(obj, pattern=pattern, model=model)
        obj = obj if converted is obj else converted
    return _unwrap(obj)


def asp_prune(model: nn.Module) -> SparsityReport:
    """ASP step for a model made with method ``asp``: one-shot magnitude N:M masks from its trained weights in
    its N:M layers (the layers kept dense at creation stay dense), then method ``fixed`` for fine-tuning (pruned
    weights set to 0 and frozen)."""
    config = getattr(model, "nm_config", None)
    if config is None:
        raise ValueError("asp_prune: the model was not made by nm_plugins.timm.create_model (no nm_config)")
    dense = [name for name, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, SparseMixin)]
    report = prune_once(model, config["pattern"], exclude=[_fnmatch_escape(n) for n in dense],
                        keep_classifier_dense=False, keep_stem_dense=False)
    before = getattr(model, "nm_report", None)
    reasons = before.dense_layers if before is not None else {}
    for entry in report.layers:
        entry.reason = reasons.get(entry.name, entry.reason) if not entry.sparse else entry.reason
    _note_authors_groupings(model, report)
    model.nm_config = {**config, "method": "fixed"}
    model.nm_report = report
    return report


def _fnmatch_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


class WideStemResNet(ResNet):
    """timm's ResNet with a ``stem_width``-wide 7x7 stem (timm's own ResNet keeps its plain stem at 64 and uses
    ``stem_width`` only for deep stems): ``conv1``, ``bn1`` and the first block's input convs get the width."""

    def __init__(self, *args, stem_width: int = 64, in_chans: int = 3, **kwargs):
        super().__init__(*args, stem_width=stem_width, in_chans=in_chans, **kwargs)
        if stem_width == 64:
            return
        if type(self.conv1) is not nn.Conv2d:
            raise ValueError("WideStemResNet widens the plain 7x7 stem only (stem_type='')")
        old = self.conv1
        self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False,
                               device=old.weight.device, dtype=old.weight.dtype)
        bn = self.bn1
        self.bn1 = type(bn)(stem_width, eps=bn.eps, momentum=bn.momentum, device=bn.weight.device,
                            dtype=bn.weight.dtype)
        block = self.layer1[0]
        new = [self.conv1]
        block.conv1 = _widened(block.conv1, stem_width)
        new.append(block.conv1)
        if block.downsample is not None:
            for i, m in enumerate(block.downsample):
                if isinstance(m, nn.Conv2d):
                    block.downsample[i] = _widened(m, stem_width)
                    new.append(block.downsample[i])
                    break
        for conv in new:  # timm's ResNet init
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        self.feature_info[0]["num_chs"] = stem_width


def _widened(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)


def resnet50x1_25(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-50 with every width times 1.25, the stem included (80, then 80/160/320/640 bottleneck widths):
    the dense base of the paper's 2:8 row (11.8M params / 1.79G FLOPs at 2:8 in the paper). No weights."""
    if pretrained:
        raise ValueError("resnet50x1_25 has no pretrained weights; train it or pass checkpoint_path=")
    args = dict(block=Bottleneck, layers=(3, 4, 6, 3), channels=(80, 160, 320, 640), stem_width=80)
    return build_model_with_cfg(WideStemResNet, "resnet50x1_25", False, **dict(args, **kwargs))


def _base_cfgs(base: str) -> dict:
    """{"<tag>": PretrainedCfg} of a base architecture in timm's registry, its default tag first."""
    return {name.partition(".")[2]: cfg for name, cfg in get_arch_pretrained_cfgs(base).items()}


def _untrained_cfg(like: str):
    """timm's pretrained cfg of ``like`` without its weights (the data config of an architecture we train)."""
    from dataclasses import replace
    return replace(get_pretrained_cfg(like), hf_hub_id=None, url=None, file=None, state_dict=None, tag=None,
                   hf_hub_filename=None, source=None, license=None, origin_url=None, paper_ids=None)


# timm's register_model reads this module's ``default_cfgs``: resnet50x1_25 gets ResNet-50's data config (no
# weights), and every nm_* name the pretrained cfgs (tags) of its base architecture
default_cfgs = generate_default_cfgs({"resnet50x1_25": _untrained_cfg("resnet50")})
register_model(resnet50x1_25)


def _make_entrypoint(model_name: str, base: str, method: str, pattern: str):
    arch, arch_kwargs = BASES[base]

    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        # pretrained_cfg (a tag such as "tv_in1k"), pretrained_cfg_overlay and cache_dir go to the base model's
        # own timm entrypoint: the same tags and local files as timm.create_model(arch, ...)
        kwargs = {**arch_kwargs, **kwargs}
        model = create_model(arch, pattern=pattern, method=method, pretrained=pretrained, **kwargs)
        cfg = getattr(model, "pretrained_cfg", None)
        if isinstance(cfg, Mapping):
            model.pretrained_cfg = model.default_cfg = {**cfg, "architecture": model_name}
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = model_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = (f"{base} with {pattern} N:M sparsity trained by {method} "
                          f"({'dense until nm_plugins.timm.asp_prune' if method == 'asp' else 'classifier dense'}).")
    return entrypoint


def registered_nm_models() -> list:
    """Names of the N:M models this module registers with timm."""
    return [f"nm_{base}_{method}_{p.replace(':', '_')}"
            for base in BASES for method in ("srste", "ste", "asp") for p in PAPER_PATTERNS]


def _register_all() -> None:
    module = sys.modules[__name__]
    for base in BASES:
        for method in ("srste", "ste", "asp"):
            for pattern in PAPER_PATTERNS:
                name = f"nm_{base}_{method}_{pattern.replace(':', '_')}"
                fn = _make_entrypoint(name, base, method, pattern)
                default_cfgs.update(generate_default_cfgs(
                    {f"{name}.{tag}{'*' if i == 0 else ''}" if tag else name: cfg
                     for i, (tag, cfg) in enumerate(_base_cfgs(BASES[base][0]).items())}))
                setattr(module, name, fn)
                register_model(fn)


_register_all()
