"""A tensor-parallel MLP on N gloo ranks, wrapped the way users wrap their inference scripts.

    python examples/tp_mlp.py --world-size 2 --out traces

Column-parallel up projection, row-parallel down projection, one all_reduce per layer; a
"prefill" over the prompt and a few "decode" steps, each tagged with profiler.phase.
"""

from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from commscope import profiler


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_rank(rank: int, world: int, port: int, out: str, run_name: str, layers: int,
             hidden: int, decode_steps: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    tp = profiler.label_group(dist.new_group(list(range(world))), "tp")
    torch.manual_seed(0)
    shard = 4 * hidden // world
    weights = [(torch.randn(hidden, 4 * hidden)[:, rank * shard:(rank + 1) * shard] / hidden ** 0.5,
                torch.randn(4 * hidden, hidden)[rank * shard:(rank + 1) * shard] / hidden ** 0.5)
               for _ in range(layers)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for up, down in weights:
            y = torch.relu(x @ up) @ down       # partial sums on each rank
            dist.all_reduce(y, group=tp)         # row-parallel reduction
            x = x + y
        return x

    with profiler.trace(out, run_name=run_name, tags={"example": "tp_mlp", "tp": world}) as s:
        x = torch.randn(1, 16, hidden)
        with profiler.phase("prefill"):
            h = forward(x)
        for step in range(decode_steps):
            with profiler.phase("decode", step=step):
                h = forward(h[:, -1:])
    if rank == 0:
        print(f"tp_mlp: trace of {world} ranks in {s.run_dir}")
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--out", default="traces")
    ap.add_argument("--run-name", default="tp_mlp")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--decode-steps", type=int, default=8)
    a = ap.parse_args(argv)
    mp.spawn(run_rank, nprocs=a.world_size,
             args=(a.world_size, _free_port(), a.out, a.run_name, a.layers, a.hidden,
                   a.decode_steps))


if __name__ == "__main__":
    main()
