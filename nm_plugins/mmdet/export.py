"""Export a trained N:M detector as a plain mmdetection checkpoint plus a dense config that needs no plugin.

    python -m nm_plugins.mmdet.export CONFIG CHECKPOINT OUT.pth [--cfg-options k=v ...]

Loads CHECKPOINT (ours: weights, masks, training state) into the model of CONFIG, bakes the masks into the
weights (:func:`nm_plugins.core.export_dense`: zeros where pruned) and writes

- ``OUT.pth``: ``{"meta": {...}, "state_dict": ...}`` with plain ``Conv2d``/``Linear`` keys, no ``nm_mask``
  buffers, no optimizer or message-hub state, only tensors and plain Python values: ``torch.load`` with
  ``weights_only=True`` (torch's default) reads it without ``nm_plugins`` installed;
- ``OUT.py``: CONFIG with the plugin removed (plain convs, ``Shared2FCBBoxHead``, no ``NMSparsityHook`` or
  custom import, no ``Pretrained`` backbone init) and ``load_from=OUT.pth``: mmdetection's own
  ``tools/test.py OUT.py OUT.pth``, ``init_detector`` or ``load_from`` give the sparse model's outputs.

The exported model computes exactly what the sparse one computes; it is dense storage (the pruned zeros are
stored), for sharing and deployment, not for further N:M training (fine-tune from CHECKPOINT for that).
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from nm_plugins.core import export_dense, sparse_layers

PLUGIN = "nm_plugins.mmdet"


def build_detector(config: str, cfg_options: dict | None = None):
    """(cfg, model): the mmengine Config of ``config`` (plugin imported) and its detector, weights not loaded."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS

    import nm_plugins.mmdet  # noqa: F401

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get("default_scope", "mmdet"))
    return cfg, MODELS.build(cfg.model)


def load_detector_checkpoint(model: nn.Module, path: str) -> dict:
    """Load our (or any) mmdet checkpoint into ``model`` strictly, refusing N:M masks for dense layers;
    returns the checkpoint dict."""
    from .compat import load_local_checkpoint
    from .hook import CHECKPOINT_KEY, check_checkpoint_layers

    ckpt = load_local_checkpoint(path, map_location="cpu")
    state = ckpt.get("state_dict", ckpt)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    check_checkpoint_layers(model, state, (ckpt.get(CHECKPOINT_KEY) or {}).get("layers"), f"checkpoint {path}")
    model.load_state_dict(state, strict=True)
    return ckpt


def _plain(value):
    """``value`` as plain Python (dict/list/tuple/str/int/float/bool/None; numpy converted), or None when it
    holds anything else (dropped from the meta)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return type(value)(items) if all(i is not None or v is None for i, v in zip(items, value)) else None
    if isinstance(value, dict):
        out = {k: _plain(v) for k, v in value.items() if isinstance(k, str)}
        return {k: v for k, v in out.items() if v is not None or value[k] is None}
    return None


def dense_config(cfg, load_from: str | None = None):
    """A copy of ``cfg`` without the plugin: SRSTEConv2d conv_cfgs -> None (plain Conv2d),
    NMShared2FCBBoxHead -> Shared2FCBBoxHead, no NMSparsityHook / custom import / Pretrained init."""
    from mmengine.config import Config

    def strip(node):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "conv_cfg" and isinstance(value, dict) and value.get("type") == "SRSTEConv2d":
                    value = None
                elif key == "init_cfg" and isinstance(value, dict) and value.get("type") == "Pretrained":
                    value = None
                elif key == "fc_sparsity":
                    continue
                out[key] = strip(value)
            if out.get("type") == "NMShared2FCBBoxHead":
                out["type"] = "Shared2FCBBoxHead"
            return out
        if isinstance(node, (list, tuple)):
            return type(node)(strip(v) for v in node)
        return node

    data = strip(copy.deepcopy(cfg.to_dict()))
    data.pop("filename", None)
    hooks = [h for h in data.get("custom_hooks") or [] if h.get("type") != "NMSparsityHook"]
    data["custom_hooks"] = hooks
    imports = data.get("custom_imports")
    if imports:
        names = [n for n in imports.get("imports", []) if not n.startswith(PLUGIN)]
        if names:
            data["custom_imports"] = {**imports, "imports": names}
        else:
            data.pop("custom_imports")
    data["load_from"] = load_from
    data["resume"] = False
    return Config(data)


def export(config: str, checkpoint: str, out: str, cfg_options: dict | None = None) -> tuple[Path, Path]:
    """Write ``out`` (plain checkpoint) and ``out`` with suffix ``.py`` (dense config); returns both paths."""
    cfg, model = build_detector(config, cfg_options)
    ckpt = load_detector_checkpoint(model, checkpoint)
    layers = {name: {"pattern": str(layer.pattern), "method": layer.method} for name, layer in sparse_layers(model)}
    export_dense(model, inplace=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    leftover = [k for k in state if k.endswith("nm_mask")]
    if leftover or any(True for _ in sparse_layers(model)):
        raise RuntimeError(f"export: N:M state left after export_dense: {leftover[:3]}")
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = out_path.with_suffix(".py")
    plain_cfg = dense_config(cfg, str(out_path.resolve()))
    plain_cfg.dump(str(cfg_path))
    meta = _plain({k: v for k, v in (ckpt.get("meta") or {}).items() if k in ("epoch", "iter", "dataset_meta", "seed")})
    meta.update(cfg=plain_cfg.pretty_text, nm_export={"source": str(checkpoint), "config": str(config),
                                                       "layers": layers})
    torch.save({"meta": meta, "state_dict": state}, out_path)
    return out_path, cfg_path


def main(argv=None) -> int:
    """Command line (see the module doc)."""
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None)
    args = parser.parse_args(argv)
    ckpt, cfg = export(args.config, args.checkpoint, args.out, args.cfg_options)
    print(f"wrote {ckpt} (plain mmdet checkpoint, masks baked in) and {cfg} (dense config, no plugin)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
