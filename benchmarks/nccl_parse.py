"""NCCL log parsing speed on a generated multi-million-line log, against `grep -c` on the same file.

    .venv/bin/python benchmarks/nccl_parse.py --lines 3000000

The log mimics a busy inference job's NCCL_DEBUG=INFO COLL,TUNING output: 4 ranks interleaved,
collective and tuning lines, proxy/alloc chatter, and 1 % torn or foreign lines.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import tempfile
import time

from commscope.profiler import parse_nccl_logs


def generate(path: str, n_lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    ops = [("AllReduce", 7), ("AllGather", 9), ("ReduceScatter", 9), ("Send", 9), ("Recv", 9)]
    with open(path, "w") as fh:
        for r in range(4):
            fh.write(f"node{r // 2}:{1000 + r}:{1000 + r} [{r % 2}] NCCL INFO ncclCommInitRank comm "
                     f"0x{r + 1:x}0 rank {r} nranks 4 cudaDev {r % 2} nvmlDev {r % 2} busId "
                     f"{r}000 commId 0xabc - Init COMPLETE\n")
        op_count = [0] * 4
        written = 4
        while written < n_lines:
            r = rng.randrange(4)
            pre = f"node{r // 2}:{1000 + r}:{1000 + r} [{r % 2}] NCCL INFO "
            x = rng.random()
            if x < 0.45:
                op, dt = ops[rng.randrange(5)]
                count = 1 << rng.randrange(8, 24)
                fh.write(f"{pre}{op}: opCount {op_count[r]:x} sendbuff 0x7f00 recvbuff 0x7f80 count "
                         f"{count} datatype {dt} op 0 root {rng.randrange(4)} comm 0x{r + 1:x}0 "
                         f"[nranks=4] stream 0x55\n")
                op_count[r] += 1
            elif x < 0.70:
                fh.write(f"{pre}AllReduce: {1 << rng.randrange(10, 26)} Bytes -> Algo RING proto "
                         f"SIMPLE channel{{Lo..Hi}}={{0..7}}\n")
            elif x < 0.99:
                fh.write(f"{pre}misc/utils.cc:233 memory stack hunk malloc(65536)\n")
            else:
                fh.write("step 12 loss 0.01 tokens/s 5000 some torn text opCount 1 sendbuff\n")
            written += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=3_000_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "nccl.log")
        generate(path, a.lines)
        size_mb = os.path.getsize(path) / 1e6
        t0 = time.perf_counter()
        subprocess.run(["grep", "-c", "NCCL INFO", path], check=True, capture_output=True)
        grep_s = time.perf_counter() - t0
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        log = parse_nccl_logs(path)
        parse_s = time.perf_counter() - t0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        n = log.summary["lines_read"]
        print(f"{n:,} lines, {size_mb:.0f} MB: parsed in {parse_s:.2f} s = {n / parse_s:,.0f} "
              f"lines/s, {size_mb / parse_s:.1f} MB/s; {len(log.collectives):,} collectives, "
              f"{log.summary['records'].get('tuning', 0):,} tuning lines")
        print(f"grep -c on the same file: {grep_s:.2f} s = {n / grep_s:,.0f} lines/s; "
              f"parser / grep time ratio: {parse_s / grep_s:.1f}x")
        print(f"peak RSS {rss0:.0f} -> {rss1:.0f} MiB (tables of {len(log.collectives):,} rows)")


if __name__ == "__main__":
    main()
