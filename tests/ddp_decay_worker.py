"""Run under torchrun: SR-STE gradients in a 2-process DDP job with gradient accumulation.

Each rank sees different data; DDP averages gradients. The decay term must appear once, not once per process
and not once per micro-batch; it is added by the optimizer step. DDP runs with find_unused_parameters=True and
a second N:M layer that this step never calls (no gradient, no decay, no error). Rank 0 writes the result to
the file named by argv[1]."""
import sys

import torch
import torch.distributed as dist

from torch.nn.parallel import DistributedDataParallel as DDP

from nm_plugins import SparseLinear, nm_mask
from nm_plugins.runtime.training import shutdown_distributed

DECAY = 0.5
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
layer = SparseLinear(8, 2, bias=False, decay=DECAY)
unused = SparseLinear(8, 2, bias=False, decay=DECAY)


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer, self.unused = layer, unused

    def forward(self, x):
        return self.layer(x)


model = DDP(TwoLayers(), find_unused_parameters=True)
opt = torch.optim.SGD(model.parameters(), lr=0.0)
xs = [torch.randn(3, 8, generator=torch.Generator().manual_seed(10 * rank + i)) for i in range(2)]
with model.no_sync():
    model(xs[0]).sum().backward()
model(xs[1]).sum().backward()
opt.step()
# expected: average over ranks of the summed data gradients, plus the decay term once
data = torch.zeros(2, 8)
for r in range(world):
    for i in range(2):
        x = torch.randn(3, 8, generator=torch.Generator().manual_seed(10 * r + i))
        data += torch.ones(2, 3) @ x
mask = nm_mask(layer.weight, "2:4")
expected = data / world + DECAY * (~mask) * layer.weight.detach()
ok = torch.allclose(layer.weight.grad, expected, atol=1e-5) and (unused.weight.grad is None or not unused.weight.grad.any())
if rank == 0:
    with open(sys.argv[1], "w") as f:
        f.write(f"{ok} {(layer.weight.grad - expected).abs().max().item()}")
shutdown_distributed()
