"""Run under torchrun: the fused SR-STE engine in a 2-process DDP job with gradient accumulation.

Each rank sees different data; DDP averages gradients. The decay term must appear once per step, as on the
per-layer path. Rank 0 writes "ok max_difference" to the file named by argv[1]."""
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nm_plugins import FusedSRSTE, SparseLinear, nm_mask
from nm_plugins.train.runtime import shutdown_distributed

DECAY = 0.5
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
net = nn.Sequential(SparseLinear(8, 8, bias=False, decay=DECAY), SparseLinear(8, 2, bias=False, decay=DECAY))
FusedSRSTE(net)
model = DDP(net)
xs = [torch.randn(3, 8, generator=torch.Generator().manual_seed(10 * rank + i)) for i in range(2)]
with model.no_sync():
    model(xs[0]).sum().backward()
model(xs[1]).sum().backward()
# expected: average over ranks of the summed data gradients (through the masked weights), plus the decay once
masks = [nm_mask(layer.weight, "2:4") for layer in net]
w1, w2 = (layer.weight.detach() * m for layer, m in zip(net, masks))
data = [torch.zeros(8, 8), torch.zeros(2, 8)]
for r in range(world):
    for i in range(2):
        x = torch.randn(3, 8, generator=torch.Generator().manual_seed(10 * r + i))
        h = x @ w1.t()
        data[1] += torch.ones(2, 3) @ h
        data[0] += (torch.ones(3, 2) @ w2).t() @ x
worst = 0.0
for layer, m, d in zip(net, masks, data):
    expected = d / world + DECAY * (~m) * layer.weight.detach()
    worst = max(worst, (layer.weight.grad - expected).abs().max().item())
if rank == 0:
    with open(sys.argv[1], "w") as f:
        f.write(f"{worst < 1e-5} {worst}")
shutdown_distributed()
