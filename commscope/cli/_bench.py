"""`commscope bench` (nccl-tests-like sweep) and `commscope demo`."""

from __future__ import annotations

import argparse


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def _cmd_bench(args: argparse.Namespace) -> int:
    from commscope import analysis, profiler

    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    print(f"sweeping {', '.join(ops)} on {args.world_size} {args.backend} ranks, "
          f"{args.min_bytes} to {args.max_bytes}, {args.iters} iterations "
          f"(+{args.warmup} warm-up) per size ...", flush=True)
    run = profiler.sweep(args.out, backend=args.backend, world_size=args.world_size, ops=ops,
                         min_bytes=_size(args.min_bytes), max_bytes=_size(args.max_bytes),
                         iters=args.iters, warmup=args.warmup, dtype=args.dtype)
    table = analysis.sweep_table(analysis.load_events(run))
    print(f"#{'op':>15} {'size (B)':>12} {'count':>12} {'type':>9} {'time (us)':>11} "
          f"{'algbw (GB/s)':>13} {'busbw (GB/s)':>13}")
    for r in table.itertuples():
        print(f" {r.op:>15} {r.bytes:>12} {r.count:>12} {r.dtype:>9} {r.time_us:>11.2f} "
              f"{r.algbw_GBps:>13.4f} {r.busbw_GBps:>13.4f}")
    print(f"# busbw: {analysis.BUSBW_DEFINITION}")
    print(f"trace: {run}  (calibrate with: commscope calibrate {run} -o calibration.json)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from commscope.demo import run_demo

    return run_demo(args.out)


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="nccl-tests-like sweep through torch.distributed",
                       description="Sweep collectives over message sizes on spawned ranks, "
                                   "write a commscope trace and print an nccl-tests-style "
                                   "table. This is how you calibrate your own cluster.")
    b.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    b.add_argument("--world-size", type=int, default=2)
    b.add_argument("--ops", default="all_reduce,all_gather,reduce_scatter",
                   help="comma-separated: all_reduce, all_gather, reduce_scatter, all_to_all, "
                        "broadcast, send")
    b.add_argument("--min-bytes", default="1K")
    b.add_argument("--max-bytes", default="4M")
    b.add_argument("--iters", type=int, default=20)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--dtype", default="float32")
    b.add_argument("-o", "--out", required=True, help="output folder for the trace")
    b.set_defaults(func=_cmd_bench)

    d = sub.add_parser("demo", help="run the end-to-end demo (what `make demo` runs)")
    d.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    d.set_defaults(func=_cmd_demo)
