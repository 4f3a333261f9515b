"""N:M Transformer translation trainer (SR-STE / STE / dense) on WMT14 En-De or the Debian-catalog proxy.

    python -m nm_plugins.translation.train --config configs/translation/wmt14_en_de_srste_2_4.yaml data.root=/data/wmt14
    torchrun --nproc_per_node 8 -m nm_plugins.translation.train --config ... data.root=/data/wmt14
    python -m nm_plugins.translation.train --config ... --resume     # continue from OUT_DIR/checkpoint.pt

Writes to ``train.out_dir`` (default runs/NAME): checkpoint.pt (atomic, every ``train.ckpt_every`` steps, with
RNG states and the data position, so a resumed run is identical to an uninterrupted one), the last
``train.keep_last`` step checkpoints' weights (for ``train.average_last`` averaging), log.jsonl and tb/ (loss,
lr, tokens/s, validation loss, SAD per layer and model), translations.tsv.gz (source, reference, hypothesis
per test sentence) and summary.json (test NLL per token, BLEU, chrF,
tokenized BLEU with sacrebleu signatures, Params, FLOPs, SAD). Test decoding runs on rank 0.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from nm_plugins.core import SADTracker, count_params_flops, sparse_layers
from nm_plugins.runtime.cli import trainer_parser
from nm_plugins.runtime.results import write_json
from nm_plugins.runtime.training import (RunLogger, StepTimes, init_distributed, load_checkpoint, masks_digest,
                                      masks_valid, rng_state, sad_log_entry, save_checkpoint, seed_everything,
                                      set_rng_state, shutdown_distributed)

from .config import load_config
from .data import collate, epoch_order, load_split, make_batches, prepare_catalog_corpus, wmt_files
from .metrics import translation_scores
from .model import PAD, build_model
from .search import beam_search, greedy
from .vocab import train_vocab
from nm_plugins.runtime.project import project_root

REPO = project_root()  # relative cache_dir is under the project folder (nm_plugins.runtime.project)


def inverse_sqrt(step: int, warmup: int) -> float:
    """Multiplier of the peak lr after ``step`` updates: linear warm-up to 1 at ``warmup``, then
    sqrt(warmup / step) (Vaswani et al.'s schedule, with the peak lr as the config's ``optim.lr``)."""
    step = step + 1
    if warmup and step < warmup:
        return step / warmup
    return math.sqrt(max(warmup, 1) / step)


def prepare_data(cfg: dict) -> tuple:
    """(vocab, {split: Split}) of the config's corpus; corpus files and the vocabulary are cached in
    ``data.cache_dir`` (made by rank 0 first under torchrun)."""
    d = cfg["data"]
    cache = Path(d["cache_dir"]) if Path(d["cache_dir"]).is_absolute() else REPO / d["cache_dir"]
    if d["corpus"] == "debian_catalogs":
        files = prepare_catalog_corpus(cache, REPO / d["packages"], REPO / d["catalog_root"], d["min_words"],
                                       d["max_words"], fractions=d["split_fractions"])
    else:
        if not d["root"]:
            raise ValueError("config: data.root (WMT_ROOT) is required for data.corpus wmt14_en_de")
        files = wmt_files(d["root"], cache)
    vocab = train_vocab([files["train"]["en"], files["train"]["de"]], d["vocab_size"], cache,
                        max_sentences=d["vocab_sentences"])
    splits = {"train": load_split(files["train"], d["src"], d["tgt"], vocab, d["max_len"], d["train_subset"], d["max_len_ratio"],
                                    keep_text=False),
              "valid": load_split(files["valid"], d["src"], d["tgt"], vocab, None, d["valid_subset"]),
              "test": load_split(files["test"], d["src"], d["tgt"], vocab, None, d["test_subset"])}
    return vocab, splits


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _loss(net, batch, smoothing: float, amp: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed label-smoothed cross-entropy, summed plain cross-entropy) over the non-pad target tokens."""
    with _autocast(device, amp):
        logits = net(batch["src"], batch["tgt_in"])
    logits, target = logits.float().flatten(0, 1), batch["tgt_out"].flatten()
    smoothed = F.cross_entropy(logits, target, ignore_index=PAD, label_smoothing=smoothing, reduction="sum")
    with torch.no_grad():
        plain = F.cross_entropy(logits, target, ignore_index=PAD, reduction="sum")
    return smoothed, plain


def _reduce(values: list, info) -> list:
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    if info.world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


def evaluate_loss(model, split, batches, info, amp: bool) -> dict:
    """Validation cross-entropy per target token (and its perplexity) over the whole split."""
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for i in range(info.rank, len(batches), info.world_size):
            batch = collate(split, batches[i], info.device)
            total += float(_loss(model, batch, 0.0, amp, info.device)[1])
            count += batch["ntokens"]
    total, count = _reduce([total, count], info)
    model.train()
    return {"loss": total / max(count, 1), "ppl": math.exp(min(total / max(count, 1), 50.0)), "tokens": int(count)}


def translate(model, vocab, split, cfg: dict, device, amp: bool) -> list[str]:
    """Beam-search translations (``decode`` section; beam 1: greedy, the same result faster) of every source of
    ``split``, in order."""
    dec = cfg["decode"]
    model.eval()
    from .data import _lengths
    order = np.argsort(_lengths(split.src), kind="stable").tolist()
    out = [None] * len(split)
    for start in range(0, len(order), dec["batch_sentences"]):
        idx = order[start:start + dec["batch_sentences"]]
        src = collate(split, idx, device)["src"]
        with _autocast(device, amp):
            hyps = greedy(model, src, dec["max_len_a"], dec["max_len_b"]) if dec["beam"] == 1 else \
                beam_search(model, src, dec["beam"], dec["lenpen"], dec["max_len_a"], dec["max_len_b"])
        for i, text in zip(idx, vocab.decode(hyps)):
            out[i] = text
    model.train()
    return out


def average_checkpoints(paths: list) -> dict:
    """Mean of the floating-point tensors of several model state_dicts (others: from the last one). For an
    N:M layer the dense master weights are averaged and its mask is recomputed from the mean on use."""
    states = [load_checkpoint(p)["model"] for p in paths]
    out = {}
    for key, value in states[-1].items():
        if value.is_floating_point():
            out[key] = sum(s[key].double() for s in states).div(len(states)).to(value.dtype)
        else:
            out[key] = value
    return out


class _CountWrapper(nn.Module):
    """Feeds count_params_flops' zero tensor (1, L) as an L-token source and an L-token target."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        tokens = torch.full(x.shape, 4, dtype=torch.long, device=x.device)
        return self.model(tokens, tokens)


def params_flops(model: nn.Module, length: int) -> dict:
    """Params (pruned N:M weights left out) and multiply-accumulates per sentence pair of ``length`` source
    and ``length`` target tokens, total and split into N:M layers vs the dense tied output projection."""
    params, flops = count_params_flops(_CountWrapper(model), (1, length))
    out_flops = model.generator.weight.numel() * length
    return {"params": params, "flops": flops, "flops_output_projection": out_flops,
            "params_embedding": model.embed.weight.numel(), "flops_length": length}


def run(cfg: dict, resume: "str | Path | bool | None" = None) -> dict:
    """Train and evaluate one configuration; returns (and on rank 0 writes) the run summary."""
    info = init_distributed(cfg["train"]["device"])
    if cfg["train"]["threads"]:
        torch.set_num_threads(int(cfg["train"]["threads"]))
    seed, tr, optim = int(cfg["train"]["seed"]), cfg["train"], cfg["optim"]
    out_dir = Path(tr["out_dir"] or Path("runs") / cfg["name"])
    if info.rank == 0:
        vocab, splits = prepare_data(cfg)
    if info.world_size > 1:
        dist.barrier()
    if info.rank != 0:
        vocab, splits = prepare_data(cfg)
    seed_everything(seed)
    model = build_model(cfg, len(vocab)).to(info.device)
    if info.is_main and tr["progress"]:
        print(model.nm_report, file=sys.stderr)
    optimizer = torch.optim.Adam(model.parameters(), lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"],
                                 weight_decay=optim["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: inverse_sqrt(s, optim["warmup_steps"]))
    tracker = SADTracker(model)
    train_batches = make_batches(splits["train"], cfg["data"]["max_tokens"], seed)
    valid_batches = make_batches(splits["valid"], cfg["data"]["max_tokens"], 0)
    step, epoch, pos, history = 0, 0, 0, []
    sums = [0.0, 0.0, 0.0]  # smoothed loss, plain loss, tokens since the last log record
    ckpt_path = out_dir / "checkpoint.pt"
    if resume:
        path = ckpt_path if resume is True else Path(resume)
        state = load_checkpoint(path, map_location=info.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        tracker.load_state_dict(state["sad"])
        step, epoch, pos, history = int(state["step"]), int(state["epoch"]), int(state["pos"]), list(state["history"])
        sums = list(state["sums"])
        set_rng_state(state["rng"])
        if info.is_main:
            print(f"resumed {path} after step {step}", file=sys.stderr)
    net = model
    if info.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    logger = RunLogger(out_dir, enabled=info.is_main)
    order = epoch_order(len(train_batches), seed, epoch, info.rank, info.world_size)
    amp, smoothing, update_freq = tr["amp"], optim["label_smoothing"], optim["update_freq"]
    t_start = t_log = time.time()
    step_times = StepTimes(tr["step_times"], info.device)
    while step < optim["max_steps"]:
        net.train()
        optimizer.zero_grad(set_to_none=True)
        micro = []
        for _ in range(update_freq):
            if pos >= len(order):
                epoch, pos = epoch + 1, 0
                order = epoch_order(len(train_batches), seed, epoch, info.rank, info.world_size)
            micro.append(collate(splits["train"], train_batches[order[pos]], info.device))
            pos += 1
        step_times.start()
        ntok = _reduce([sum(b["ntokens"] for b in micro)], info)[0]
        step_loss = 0.0
        for j, batch in enumerate(micro):
            sync = j == len(micro) - 1 or info.world_size == 1
            with (contextlib.nullcontext() if sync else net.no_sync()):
                smoothed, plain = _loss(net, batch, smoothing, amp, info.device)
                # normalised by the global token count; DDP averages over processes, hence x world size
                (smoothed * info.world_size / ntok).backward()
            step_loss += float(smoothed.detach())
            sums[0] += float(smoothed.detach())
            sums[1] += float(plain)
            sums[2] += batch["ntokens"]
        if optim["clip_norm"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim["clip_norm"])
        optimizer.step()
        scheduler.step()
        step_times.stop(step_loss / max(sum(b["ntokens"] for b in micro), 1))  # per target token, this process
        step += 1
        if step % tr["log_every"] == 0 or step == optim["max_steps"]:
            s0, s1, n = _reduce(sums, info)
            rec = {"epoch": epoch, "train": {"loss": s0 / max(n, 1), "nll": s1 / max(n, 1), "lr": optimizer.param_groups[0]["lr"],
                                             "tokens_per_s": n / max(time.time() - t_log, 1e-9)}}
            if step % tr["eval_every"] == 0 or step == optim["max_steps"]:
                rec["valid"] = evaluate_loss(model, splits["valid"], valid_batches, info, amp)
            sad_record = tracker.record()
            rec.update(sad_log_entry(sad_record))
            history.append({"step": step, "train_loss": rec["train"]["loss"], "valid": rec.get("valid"),
                            "sad_init": sad_record["model"]["sad_init_norm"], "sad_prev": sad_record["model"]["sad_prev_norm"]})
            logger.log(step, rec)
            if info.is_main and tr["progress"]:
                print(f"{cfg['name']} step {step}/{optim['max_steps']} loss {rec['train']['loss']:.3f} "
                      f"{'valid ' + format(rec['valid']['loss'], '.3f') if 'valid' in rec else ''} "
                      f"SAD {history[-1]['sad_init']:.4f}", file=sys.stderr, flush=True)
            sums, t_log = [0.0, 0.0, 0.0], time.time()
        if step % tr["ckpt_every"] == 0 or step == optim["max_steps"]:
            if info.is_main:
                keep = out_dir / f"weights_step{step}.pt"
                if tr["keep_last"]:
                    save_checkpoint(keep, {"step": step, "model": model.state_dict()})
                    for old in sorted(out_dir.glob("weights_step*.pt"), key=lambda p: int(p.stem[12:]))[:-tr["keep_last"]]:
                        old.unlink()
                save_checkpoint(ckpt_path, {"step": step, "epoch": epoch, "pos": pos, "model": model.state_dict(),
                                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                            "sad": tracker.state_dict(), "rng": rng_state(), "history": history,
                                            "sums": sums, "config": cfg})
            if info.world_size > 1:
                dist.barrier()
        stop = tr["stop_after_step"]
        if stop is not None and step >= stop and step < optim["max_steps"]:
            logger.close()
            return {"status": "stopped", "step": step, "out_dir": str(out_dir)}
    logger.close()
    seconds = time.time() - t_start
    summary = {"status": "done"}
    if info.is_main:
        summary = finish(model, vocab, splits, cfg, info, history, seconds, out_dir, step_times.record())
    return summary


def finish(model, vocab, splits, cfg, info, history, seconds, out_dir: Path, step_times: "dict | None" = None) -> dict:
    """Rank 0 after training: optional checkpoint averaging, test translation, scores, summary.json (with the
    per-step record ``step_times`` when given)."""
    tr, sp = cfg["train"], cfg["sparsity"]
    masks, valid = masks_digest(model), masks_valid(model)
    averaged = sorted(out_dir.glob("weights_step*.pt"), key=lambda p: int(p.stem[12:]))[-tr["average_last"]:] \
        if tr["average_last"] and tr["average_last"] > 1 else []
    if len(averaged) > 1:
        model.load_state_dict(average_checkpoints(averaged))
    t0 = time.time()
    hyps = translate(model, vocab, splits["test"], cfg, info.device, tr["amp"])
    scores = translation_scores(hyps, splits["test"].tgt_text)
    decode_seconds = time.time() - t0
    with gzip.open(out_dir / "translations.tsv.gz", "wt", encoding="utf-8") as f:
        for src, ref, hyp in zip(splits["test"].src_text, splits["test"].tgt_text, hyps):
            f.write(f"{src}\t{ref}\t{hyp}\n".replace("\r", " "))
    # rank 0 alone: no collective reduction (world size 1 for this evaluation)
    test_nll = evaluate_loss(model, splits["test"], make_batches(splits["test"], cfg["data"]["max_tokens"], 0),
                             dataclasses.replace(info, rank=0, world_size=1), tr["amp"])
    counts = params_flops(model, 20)
    last_valid = next((h["valid"] for h in reversed(history) if h["valid"]), None)
    n_ex = cfg["decode"]["examples"]
    summary = {"status": "done", "name": cfg["name"], "method": sp["method"],
               "method_args": dict(sp.get("method_args") or {}), "pattern": None if sp["method"] == "dense" else sp["pattern"], "seed": int(tr["seed"]),
               **{k: scores[k] for k in ("bleu", "chrf", "bleu_tok", "bleu_bp", "sys_len", "ref_len")},
               "signatures": scores["signatures"], "test_sentences": scores["sentences"],
               "valid_loss": last_valid["loss"] if last_valid else None, "test_nll": test_nll["loss"],
               "test_tokens": test_nll["tokens"], **counts,
               "vocab_size": len(vocab), "averaged_checkpoints": [p.name for p in averaged] if len(averaged) > 1 else [],
               "sad_final": history[-1]["sad_init"] if history else 0.0, "sad_curve": [h["sad_init"] for h in history],
               "sad_steps": [h["step"] for h in history], "valid_curve": [h["valid"]["loss"] if h["valid"] else None for h in history],
               "steps": cfg["optim"]["max_steps"], "world_size": info.world_size, "seconds": seconds,
               "decode_seconds": decode_seconds, "masks_sha": masks, "masks_valid": valid,
               "sparse_layer_count": len(list(sparse_layers(model))),
               "out_dir": str(out_dir), "config": cfg,
               "examples": [{"src": s, "ref": r, "hyp": h} for s, r, h in
                            list(zip(splits["test"].src_text, splits["test"].tgt_text, hyps))[:n_ex]]}
    if step_times is not None:
        summary["step_times"] = step_times
    write_json(out_dir / "summary.json", summary)
    return summary


def main(argv=None) -> int:
    """Command line: parse --config/--resume/overrides, train, print the summary and sacrebleu signature (rank 0)."""
    parser = trainer_parser(__doc__, "configs/translation/", "optim.max_steps=100 data.root=/data/wmt14")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    summary = run(cfg, resume=args.resume_from or args.resume)
    if summary["status"] == "done" and int(os.environ.get("RANK", "0")) == 0:
        print(f"BLEU {summary['bleu']:.2f} ({summary['signatures']['bleu']}); tokenized BLEU {summary['bleu_tok']:.2f}; "
              f"chrF {summary['chrf']:.2f} ({summary['signatures']['chrf']})", file=sys.stderr)
        print(json.dumps({k: v for k, v in summary.items() if not k.endswith("_curve") and k != "examples"}), flush=True)
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
