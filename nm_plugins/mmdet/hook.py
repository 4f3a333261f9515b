"""``NMSparsityHook``: SAD, kept-weight share and mask-validity logging through mmengine's message hub,
and the N:M masks / SAD state carried through checkpoints so a resumed run keeps its topology."""
from __future__ import annotations

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmdet.registry import HOOKS

from nm_plugins.core import SADTracker, is_valid_nm_mask, sparse_layers

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
    from the saved weights) and ``checkpoint['nm_sparsity']`` with the SAD tracker state; on resume both are
    restored and a mask that differs from the saved one is reported (``resume_mask_mismatch``).
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
        self.last_scalars: dict = {}

    @staticmethod
    def _model(runner) -> torch.nn.Module:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train(self, runner) -> None:
        model = self._model(runner)
        layers = dict(sparse_layers(model))
        if not layers:
            print_log("NMSparsityHook: the model has no N:M layers; nothing to track", logger="current", level=30)
            return
        if self._resume_masks is not None:
            mismatched = 0
            for name, layer in layers.items():
                saved = self._resume_masks.get(name)
                if saved is None:
                    continue
                if layer.method == "fixed":  # a frozen mask is the saved one, whatever the weights say
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
            self.tracker.load_state_dict(self._resume_state)
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
            valid &= is_valid_nm_mask(mask, layer.pattern)
            kept += mask.numel() if layer.method == "dense" else int(mask.sum())
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
        if self.tracker is not None:
            checkpoint[CHECKPOINT_KEY] = {"version": 1, "sad_tracker": self.tracker.state_dict()}

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict", {})
        self._resume_masks = {k[: -len(".nm_mask")]: v for k, v in state.items() if k.endswith(".nm_mask")} or None
        extra = checkpoint.get(CHECKPOINT_KEY)
        self._resume_state = extra["sad_tracker"] if extra else None
