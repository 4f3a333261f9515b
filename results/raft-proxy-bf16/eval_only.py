"""Evaluate the committed fp32 proxy checkpoints (runs/raft/proxy*/<tag>/final.pth, from `make reproduce-raft`) in fp32
and in bf16 autocast (12 updates, the proxy validation split): the effect of bf16 EVALUATION alone.
Run from the repository root: .venv/bin/python results/raft-proxy-bf16/eval_only.py"""
import json
import torch
from nm_plugins.raft.model import create
from nm_plugins.raft.datasets import val_set
from nm_plugins.raft.evaluate import evaluate
from nm_plugins.raft.train import load_config
torch.set_num_threads(1)
cfg = load_config("configs/raft/proxy.yaml")
ds = val_set("proxy", cfg["data"]["proxy"])
out = {}
for tag, method in (("srste_2x4", "srste"), ("dense", "dense")):
    for seed, name in ((0, "proxy"), (1, "proxy-s1"), (2, "proxy-s2")):
        model = create("small", "2:4", method, 2e-4, weights=f"runs/raft/{name}/{tag}/final.pth")
        r = {p: evaluate(model, ds, iters=12, batch_size=10, amp=(p == "bf16"), amp_cpu=True)["epe"] for p in ("fp32", "bf16")}
        out[f"{tag}/{seed}"] = r
        print(tag, seed, r, flush=True)
json.dump(out, open("results/raft-proxy-bf16/eval_only.json", "w"), indent=1)
