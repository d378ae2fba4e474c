"""`make demo`: trace a tensor-parallel example and an unmodified torchrun program, then summarise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

__all__ = ["run_demo"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def run_demo(out: str = "demo_out") -> int:
    """Run the demo into `out` and print where everything is."""
    import analysis

    t0 = time.time()
    out = os.path.abspath(out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    examples = os.path.join(_ROOT, "examples")

    _step("1/3 tensor-parallel MLP on 2 gloo ranks, wrapped with profiler.trace")
    subprocess.run([sys.executable, os.path.join(examples, "tp_mlp.py"), "--world-size", "2",
                    "--out", os.path.join(out, "traces"), "--run-name", "tp_mlp"], check=True)

    _step("2/3 an unmodified program under `commscope run -- torchrun --nproc-per-node 2`")
    subprocess.run([sys.executable, "-m", "commscope", "run", "--out",
                    os.path.join(out, "traces"), "--run-name", "plain_torchrun", "--",
                    sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                    os.path.join(examples, "plain_collectives.py")], check=True)

    _step("3/3 what was recorded")
    for run in ("tp_mlp", "plain_torchrun"):
        df = analysis.load_events(os.path.join(out, "traces", run))
        df["time_us"] = (df["t_end_ns"] - df["t_start_ns"]) / 1e3
        table = (df.groupby(["phase", "op", "pg_dim", "bytes"], dropna=False)
                 .agg(calls=("seq", "size"), ranks=("rank", "nunique"),
                      median_us=("time_us", "median"))
                 .reset_index())
        print(f"\n{run}: {len(df)} events from {df['rank'].nunique()} ranks "
              f"({os.path.join(out, 'traces', run)})")
        print(table.to_string(index=False))
    print(f"\ndemo finished in {time.time() - t0:.1f} s; traces under {out}/traces")
    return 0
