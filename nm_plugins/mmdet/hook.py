"""``NMSparsityHook``: SAD, kept-weight share and mask-validity logging through mmengine's message hub,
the N:M masks / SAD state carried through checkpoints so a resumed run keeps its topology, and the checks
that refuse a sparse checkpoint for dense layers (``load_from``, ``resume`` or a ``Pretrained`` init_cfg)."""
from __future__ import annotations

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmdet.registry import HOOKS

from nm_plugins.core import SADTracker, apply_srste_decay, check_sparse_state_dict, sparse_layers

CHECKPOINT_KEY = "nm_sparsity"


@HOOKS.register_module()
class NMSparsityHook(Hook):
    """Log N:M statistics every ``interval`` training iterations and keep masks across checkpoints.

    Scalars (``train/nm/...`` in the message hub, hence in mmengine's log and visualisation backends):
    ``sad_init`` / ``sad_prev`` (whole-model SAD vs the initial masks / the last log, normalised by the
    number of maskable weights; ``*_abs`` are counts), ``sad_init/<stage>`` and ``sad_prev/<stage>`` per
    stage (the first ``stage_depth`` parts of the layer names, e.g. ``backbone.layer1``), ``kept_share``
    (kept weights of the N:M layers / their weights), ``model_kept_share`` (kept conv/linear weights of the
    whole model / all of them) and ``masks_valid`` (1 when every mask is a valid N:M mask). With
    ``strict=True`` an invalid mask raises RuntimeError.

    Checkpoints get the current masks in their ``state_dict`` (the layers' ``nm_mask`` buffers, refreshed
    from the saved weights) and ``checkpoint['nm_sparsity']`` with the SAD tracker state and each N:M layer's
    method and pattern. ``resume``: masks and SAD state are restored (SAD keeps measuring against the first
    run's initial masks) and a mask that differs from the saved one is reported (``resume_mask_mismatch``).
    ``load_from`` (fine-tuning): the masks come with the weights (``fixed`` layers keep the saved ones), but SAD
    starts a NEW baseline, the masks at the start of this run, for every layer (the previous run's tracker is
    not restored). Loading refuses (ValueError naming the layers) a checkpoint whose layers are N:M sparse into
    layers of this model that are dense (plain conv/linear, or ``method='dense'``): that would silently give
    the unmasked master weights; export it with ``python -m nm_plugins.mmdet.export`` first.
    """

    priority = "NORMAL"

    def __init__(self, interval: int = 50, stage_depth: int = 2, strict: bool = False):
        if int(interval) < 1:
            raise ValueError(f"NMSparsityHook.interval must be >= 1, got {interval}")
        self.interval = int(interval)
        self.stage_depth = int(stage_depth)
        self.strict = strict
        self.tracker: SADTracker | None = None
        self._resume_state: dict | None = None
        self._resume_masks: dict | None = None
        self.loaded: str | None = None  # "resume" or "load_from" once a checkpoint was loaded
        self.last_scalars: dict = {}

    @staticmethod
    def _model(runner) -> torch.nn.Module:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_run(self, runner) -> None:
        """Before mmengine's init_weights: refuse a ``Pretrained`` init_cfg checkpoint that is N:M sparse
        where this model's layers are dense."""
        model = self._model(runner)
        for name, module in model.named_modules():
            init = getattr(module, "init_cfg", None)
            if isinstance(init, dict) and init.get("type") == "Pretrained" and init.get("checkpoint"):
                _check_pretrained(module, name or "model", init)

    def before_train(self, runner) -> None:
        model = self._model(runner)
        layers = dict(sparse_layers(model))
        if not layers:
            print_log("NMSparsityHook: the model has no N:M layers; nothing to track", logger="current", level=30)
            return
        _decay_before_clipping(runner.optim_wrapper)
        if self._resume_masks is not None:
            mismatched = 0
            for name, layer in layers.items():
                saved = self._resume_masks.get(name)
                if saved is None:
                    continue
                if not layer.nm_method.refreshes:  # a frozen mask is the saved one, whatever the weights say
                    with torch.no_grad():
                        layer.nm_mask.copy_(saved.to(layer.nm_mask.device))
                    layer._state.key = layer._weight_key()
                mismatched += int(not torch.equal(layer.mask().cpu(), saved.cpu().bool()))
            runner.message_hub.update_scalar("train/nm/resume_mask_mismatch", mismatched)
            if mismatched:
                print_log(f"NMSparsityHook: {mismatched} layers resumed with masks differing from the checkpoint",
                          logger="current", level=30)
        self.tracker = SADTracker(model)
        if self._resume_state is not None:
            done = self.tracker.load_state_dict(self._resume_state)
            if done["new"] or done["dropped"]:
                print_log(f"NMSparsityHook: resumed SAD state for {len(done['restored'])} layers; new baseline for "
                          f"{len(done['new'])} layers not in the checkpoint, {len(done['dropped'])} saved layers "
                          f"dropped", logger="current", level=30)
        elif self.loaded == "load_from":
            print_log("NMSparsityHook: load_from (fine-tuning): SAD is measured from the masks at the start of "
                      "this run (new baseline)", logger="current")
        self._resume_state = self._resume_masks = None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.tracker is None:
            return
        if self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner):
            self.log_stats(runner)

    def stats(self) -> dict:
        """The current statistics as a flat {name: number} dict (also advances the 'since last' SAD)."""
        model = self.tracker.model
        record = self.tracker.record()
        out = {"sad_init": record["model"]["sad_init_norm"], "sad_prev": record["model"]["sad_prev_norm"],
               "sad_init_abs": record["model"]["sad_init"], "sad_prev_abs": record["model"]["sad_prev"]}
        for stage, s in SADTracker.by_stage(record, self.stage_depth).items():
            out[f"sad_init/{stage}"] = s["sad_init_norm"]
            out[f"sad_prev/{stage}"] = s["sad_prev_norm"]
        kept = total = 0
        valid = True
        sparse_ids = set()
        for _, layer in sparse_layers(model):
            sparse_ids.add(id(layer))
            mask = layer.mask()
            valid &= layer.mask_is_valid(mask)
            kept += mask.numel() if not layer.nm_method.applies_mask else int(mask.sum())
            total += mask.numel()
        all_kept, all_total = kept, total
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and id(m) not in sparse_ids:
                all_kept += m.weight.numel()
                all_total += m.weight.numel()
        out.update(kept_share=kept / max(total, 1), model_kept_share=all_kept / max(all_total, 1),
                   masks_valid=float(valid))
        return out

    def log_stats(self, runner) -> dict:
        """Compute :meth:`stats` and push them to the message hub as ``train/nm/<name>``."""
        stats = self.stats()
        for key, value in stats.items():
            runner.message_hub.update_scalar(f"train/nm/{key}", value)
        self.last_scalars = stats
        if not stats["masks_valid"]:
            msg = f"NMSparsityHook: invalid N:M mask at iteration {runner.iter + 1}"
            if self.strict:
                raise RuntimeError(msg)
            print_log(msg, logger="current", level=40)
        return stats

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = self._model(runner)
        state = checkpoint.get("state_dict")
        for name, layer in sparse_layers(model):
            mask = layer.mask().detach().cpu().clone()  # refreshed from the weights being saved
            if state is not None:
                state[f"{name}.nm_mask"] = mask
        extra = {"version": 2, "layers": {name: {"method": layer.method, "pattern": str(layer.pattern)}
                                          for name, layer in sparse_layers(model)}}
        if self.tracker is not None:
            extra["sad_tracker"] = self.tracker.state_dict()
        checkpoint[CHECKPOINT_KEY] = extra

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Check the checkpoint against the model; keep its masks, and its SAD state only when resuming."""
        state = {k[len("module."):] if k.startswith("module.") else k: v
                 for k, v in checkpoint.get("state_dict", {}).items()}
        extra = checkpoint.get(CHECKPOINT_KEY) or {}
        check_checkpoint_layers(self._model(runner), state, extra.get("layers"), "checkpoint")
        self.loaded = "resume" if getattr(runner, "_resume", False) else "load_from"
        self._resume_masks = {k[: -len(".nm_mask")]: v for k, v in state.items() if k.endswith(".nm_mask")} or None
        self._resume_state = extra.get("sad_tracker") if self.loaded == "resume" else None


def check_checkpoint_layers(model: torch.nn.Module, state: dict, layers: dict | None, what: str) -> None:
    """ValueError when ``state`` holds N:M masks for layers that are dense in ``model``: plain conv/linear
    (:func:`nm_plugins.core.check_sparse_state_dict`), or N:M layers with ``method='dense'`` that
    the checkpoint's ``layers`` metadata (``{name: {"method", "pattern"}}``) records as sparse."""
    try:
        check_sparse_state_dict(model, state)
    except ValueError as e:
        raise ValueError(f"{what}: {e} (python -m nm_plugins.mmdet.export CONFIG CHECKPOINT OUT)") from None
    if not layers:
        return
    dense = [name for name, layer in sparse_layers(model)
             if not layer.nm_method.applies_mask and layers.get(name, {}).get("method", "dense") != "dense"]
    if dense:
        shown = ", ".join(dense[:5]) + (f" and {len(dense) - 5} more" if len(dense) > 5 else "")
        raise ValueError(
            f"{what} comes from an N:M sparse model (layers {shown} were {layers[dense[0]]['method']} "
            f"{layers[dense[0]]['pattern']}), but these layers are method='dense' here: loading would give the "
            f"unmasked master weights. Use the config with the same pattern, or export a dense checkpoint first "
            f"(python -m nm_plugins.mmdet.export CONFIG CHECKPOINT OUT)")


def _check_pretrained(module: torch.nn.Module, name: str, init: dict) -> None:
    """Check a ``Pretrained`` init_cfg checkpoint (ours: the classification trainer's ``{"model": ..., "config"}``
    or an mmengine checkpoint) against ``module`` before mmengine loads it."""
    import os.path as osp

    from .compat import load_local_checkpoint
    if not osp.isfile(osp.expanduser(str(init["checkpoint"]))):
        return  # URLs and missing files: mmengine's own load handles (and reports) them
    ckpt = load_local_checkpoint(init["checkpoint"], map_location="cpu")
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    prefix = init.get("prefix")
    if prefix:
        prefix = prefix if prefix.endswith(".") else prefix + "."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    layers = (ckpt.get(CHECKPOINT_KEY) or {}).get("layers") if isinstance(ckpt, dict) else None
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    if layers is None and isinstance(config, dict) and isinstance(config.get("sparsity"), dict):
        sp = config["sparsity"]  # nm_plugins.train.classify: one method/pattern for every masked layer
        layers = {k[: -len(".nm_mask")]: {"method": sp.get("method"), "pattern": sp.get("pattern")}
                  for k in state if k.endswith(".nm_mask")}
    check_checkpoint_layers(module, state, layers, f"{name}.init_cfg checkpoint {init['checkpoint']}")


def _decay_before_clipping(optim_wrapper) -> None:
    """With ``clip_grad`` set, add the owed SR-STE decay just before mmengine clips (after AmpOptimWrapper has
    unscaled), so the clipped gradient includes it, as in the authors' code; without clipping the optimizer step
    adds it. Wraps each wrapper's ``clip_func`` once."""
    wrappers = getattr(optim_wrapper, "optim_wrappers", None)
    for wrapper in (wrappers.values() if isinstance(wrappers, dict) else [optim_wrapper]):
        clip = getattr(wrapper, "clip_func", None)
        if clip is None or getattr(clip, "_adds_srste_decay", False):
            continue

        def clip_with_decay(params, *args, _clip=clip, **kwargs):
            params = list(params)
            apply_srste_decay(params)
            return _clip(params, *args, **kwargs)

        clip_with_decay._adds_srste_decay = True
        wrapper.clip_func = clip_with_decay
