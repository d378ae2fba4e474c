"""NCCL log parsing speed on a generated multi-million-line log, against `grep -c` on the same file,
and the records recovered against what the generator wrote.

    .venv/bin/python benchmarks/nccl_parse.py --lines 2000000 [--also-numpy]

It says which scanner ran: the compiled kernel (`native`, profiler/_cscan.c) or the numpy
fallback (`numpy`: not built, or COMMSCOPE_NO_NATIVE=1). `--also-numpy` parses the file a second
time with the fallback in the same process (so that run finds the page cache and the allocator
warm) and checks the tables are identical.

The log mimics a busy inference job's NCCL_DEBUG=INFO COLL,TUNING output: 4 ranks interleaved
(two of them behind mpirun's `[1,r]<stdout>:` tag), collective lines each followed by its tuning
line, proxy/alloc chatter, 1 % foreign lines, and damage: records wrapped onto a second line
(cut anywhere after the op name), torn fragments glued in front of a full record, colour codes.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import tempfile
import time

import pandas as pd

from commscope.profiler import _nccl_scan, parse_nccl_logs

_OPS = [("AllReduce", 7, 4), ("AllGather", 9, 2), ("ReduceScatter", 9, 2), ("Send", 9, 2),
        ("Recv", 9, 2)]


def generate(path: str, n_lines: int, seed: int = 0) -> dict:
    """Write the log; returns the truth (complete collective and tuning records written)."""
    rng = random.Random(seed)
    truth = {"collectives": 0, "tunings": 0, "wrapped": 0, "torn": 0}
    with open(path, "w") as fh:
        pre = []
        for r in range(4):
            tag = f"[1,{r}]<stdout>:" if r >= 2 else ""
            pre.append(f"{tag}node{r // 2}:{1000 + r}:{1000 + r} [{r % 2}] NCCL INFO ")
            fh.write(f"{pre[r]}ncclCommInitRank comm 0x{r + 1:x}0 rank {r} nranks 4 cudaDev "
                     f"{r % 2} nvmlDev {r % 2} busId {r}000 commId 0xabc - Init COMPLETE\n")
        op_count = [0] * 4
        written = 4
        while written < n_lines:
            r = rng.randrange(4)
            x = rng.random()
            if x < 0.45:
                op, dt, esize = _OPS[rng.randrange(5)]
                count = 1 << rng.randrange(8, 24)
                rec = (f"{op}: opCount {op_count[r]:x} sendbuff 0x7f00 recvbuff 0x7f80 count "
                       f"{count} datatype {dt} op 0 root {rng.randrange(4)} comm 0x{r + 1:x}0 "
                       f"[nranks=4] stream 0x55")
                op_count[r] += 1
                truth["collectives"] += 1
                y = rng.random()
                if y < 0.002:  # wrapped anywhere after the op name, before the last value
                    cut = rng.randrange(len(op) + 1, rec.rindex(" "))
                    fh.write(f"{pre[r]}{rec[:cut]}\n{rec[cut:]}\n")
                    truth["wrapped"] += 1
                    written += 1
                elif y < 0.003:  # a torn fragment of another rank's record in front
                    fh.write(f"{pre[(r + 1) % 4]}AllReduce: opCount 1 sendb{pre[r]}{rec}\n")
                    truth["torn"] += 1
                elif y < 0.004:
                    fh.write(f"\x1b[32m{pre[r]}{rec}\x1b[0m\n")
                else:
                    fh.write(f"{pre[r]}{rec}\n")
                if rng.random() < 0.6 and written + 1 < n_lines:
                    nbytes = count * esize * (4 if op in ("AllGather", "ReduceScatter") else 1)
                    fh.write(f"{pre[r]}{op}: {nbytes} Bytes -> Algo RING proto SIMPLE "
                             f"channel{{Lo..Hi}}={{0..7}}\n")
                    truth["tunings"] += 1
                    written += 1
            elif x < 0.99:
                fh.write(f"{pre[r]}misc/utils.cc:233 memory stack hunk malloc(65536)\n")
            else:
                fh.write("step 12 loss 0.01 tokens/s 5000 some torn text opCount 1 sendbuff\n")
            written += 1
    return truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--also-numpy", action="store_true",
                    help="parse again with the numpy fallback and compare the tables")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "nccl.log")
        truth = generate(path, a.lines)
        size_mb = os.path.getsize(path) / 1e6
        subprocess.run(["cat", path], check=True, stdout=subprocess.DEVNULL)  # page cache
        t0 = time.perf_counter()
        subprocess.run(["grep", "-c", "NCCL INFO", path], check=True, capture_output=True)
        grep_s = time.perf_counter() - t0
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0, c0 = time.perf_counter(), time.process_time()
        log = parse_nccl_logs(path)
        parse_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        n = log.summary["lines_read"]
        rec = log.summary["records"]
        c = log.collectives
        print(f"scanner: {_nccl_scan.KERNEL}")
        print(f"{n:,} lines, {size_mb:.0f} MB: parsed in {parse_s:.2f} s = {n / parse_s:,.0f} "
              f"lines/s, {size_mb / parse_s:.1f} MB/s; CPU time {cpu_s:.2f} s (all threads) = "
              f"{n / cpu_s:,.0f} lines per CPU-second; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
        print(f"grep -c on the same file: {grep_s:.2f} s = {n / grep_s:,.0f} lines/s; "
              f"parser / grep time ratio: {parse_s / grep_s:.1f}x")
        print(f"collectives recovered: {len(c):,} of {truth['collectives']:,} written "
              f"({100 * len(c) / truth['collectives']:.3f} %), of them rejoined from two lines: "
              f"{rec.get('wrapped:collective', 0):,} of {truth['wrapped']:,}; torn fragments "
              f"reported: {rec.get('torn:collective', 0):,} of {truth['torn']:,}")
        print(f"tuning lines: {rec.get('tuning', 0):,} of {truth['tunings']:,} written; "
              f"collectives with algo/proto: {int(c['algo'].notna().sum()):,}")
        print(f"peak RSS {rss0:.0f} -> {rss1:.0f} MiB (tables of {len(c):,} rows)")
        if a.also_numpy and _nccl_scan._CSCAN is not None:
            _nccl_scan._CSCAN = None  # the fallback, as COMMSCOPE_NO_NATIVE=1 gives it
            t0 = time.perf_counter()
            ref = parse_nccl_logs(path)
            np_s = time.perf_counter() - t0
            for name in ("collectives", "communicators", "topology", "warnings", "unparsed"):
                pd.testing.assert_frame_equal(getattr(log, name), getattr(ref, name))
            assert log.summary == ref.summary
            print(f"numpy fallback, same process, second: {np_s:.2f} s = {n / np_s:,.0f} "
                  f"lines/s; native / numpy time: {parse_s / np_s:.2f}; tables identical")


if __name__ == "__main__":
    main()
