"""A program that knows nothing about commscope; trace it with

    commscope run --out traces -- torchrun --nproc-per-node 2 examples/plain_collectives.py
"""

import torch
import torch.distributed as dist


def main() -> None:
    dist.init_process_group("gloo")  # rank and world size from torchrun's environment
    rank, world = dist.get_rank(), dist.get_world_size()
    x = torch.full((1024,), float(rank))
    for _ in range(5):
        dist.all_reduce(x)
    out = torch.empty(1024 * world)
    dist.all_gather_into_tensor(out, x)
    if rank == 0:
        dist.send(torch.arange(16.0), dst=1)
    elif rank == 1:
        buf = torch.empty(16)
        dist.recv(buf, src=0)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
