"""A program that fails after some communication (used to show that its trace survives)."""

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
for _ in range(4):
    dist.all_reduce(torch.ones(8))
raise SystemExit(f"rank {dist.get_rank()}: simulated failure after 4 all_reduce calls")
