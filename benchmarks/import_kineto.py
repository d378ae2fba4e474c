"""commscope's Kineto import vs Holistic Trace Analysis loading the same multi-rank trace.

    .venv/bin/pip install holistictraceanalysis      # for this benchmark only
    .venv/bin/python benchmarks/import_kineto.py [--copies N]

The trace is param's 8-rank DLRM set (../shared/data/kineto); `--copies N` makes each rank's file
N times longer (the event list repeated with shifted timestamps and correlation ids) to show how
both scale. Each tool runs in a fresh interpreter; reported: wall time and peak resident memory
of that interpreter plus its child processes (HTA parses ranks in a process pool). One run each,
in the same invocation; ratios are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DLRM = os.path.join(ROOT, "..", "shared", "data", "kineto",
                    "facebookresearch__param__dlrm_kineto.tar.gz")

_CHILD = r"""
import json, resource, sys, time
kind, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
# Libraries are imported before the clock starts: on a loaded machine interpreter start-up
# would otherwise dominate; their memory is in the peak for both tools.
def cpu():
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
if kind == "commscope":
    from commscope import analysis, profiler
    c0, t0 = cpu(), time.perf_counter()
    run = profiler.import_trace(src, out, run_name="bench")
    n = sum(m["events_written"] for m in analysis.load_metadata(run))
else:
    from hta.trace_analysis import TraceAnalysis
    c0, t0 = cpu(), time.perf_counter()
    a = TraceAnalysis(trace_dir=src)
    n = sum(len(a.t.get_trace(r)) for r in a.t.get_ranks())
dt = time.perf_counter() - t0
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"s": dt, "rss_mb": (me.ru_maxrss + kids.ru_maxrss) / 1024,
                  "self_mb": me.ru_maxrss / 1024, "n": n,
                  "cpu_s": cpu() - c0}))
"""


def _make_traces(dst: str, copies: int) -> int:
    """Extract the 8 per-rank files; with copies > 1, lengthen each. Returns total bytes."""
    with tarfile.open(DLRM) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(".json")]
        total = 0
        for m in members:
            fh = tf.extractfile(m)
            assert fh is not None
            doc = json.load(fh)
            if copies > 1:
                ev = doc["traceEvents"]
                span = max(e.get("ts", 0) + e.get("dur", 0) for e in ev) - \
                    min(e.get("ts", 1 << 62) for e in ev if "ts" in e) + 1000
                out = []
                for c in range(copies):
                    for e in ev:
                        e2 = dict(e)
                        if "ts" in e2 and isinstance(e2["ts"], (int, float)):
                            e2["ts"] = e2["ts"] + c * span
                        if isinstance(e2.get("args"), dict) and "correlation" in e2["args"]:
                            e2["args"] = dict(e2["args"],
                                              correlation=e2["args"]["correlation"] + c * 10**7)
                        if e2.get("cat") == "ac2g" and isinstance(e2.get("id"), int):
                            e2["id"] = e2["id"] + c * 10**7
                        out.append(e2)
                doc["traceEvents"] = out
            path = os.path.join(dst, os.path.basename(m.name))
            with open(path, "w") as w:
                json.dump(doc, w, indent=1)
            total += os.path.getsize(path)
    return total


def _run(kind: str, src: str, out: str) -> dict:
    p = subprocess.run([sys.executable, "-c", _CHILD, kind, src, out], capture_output=True,
                       text=True, timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=1)
    args = ap.parse_args()
    if not os.path.exists(DLRM):
        raise SystemExit(f"missing {DLRM} (../shared/data)")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "traces")
        os.makedirs(src)
        size = _make_traces(src, args.copies)
        print(f"8-rank DLRM Kineto trace x{args.copies}: {size / 1e6:.1f} MB of JSON")
        ours = _run("commscope", src, os.path.join(tmp, "out"))
        try:
            hta = _run("hta", src, "")
        except SystemExit as exc:
            print(f"HTA: {exc}")
            hta = None
        print(f"commscope import: {ours['s']:.2f} s wall, {ours['cpu_s']:.2f} s CPU, peak RSS "
              f"{ours['rss_mb']:.0f} MB ({ours['n']} communication rows)")
        if hta:
            print(f"HTA TraceAnalysis: {hta['s']:.2f} s wall, {hta['cpu_s']:.2f} s CPU, peak RSS "
                  f"{hta['rss_mb']:.0f} MB (self {hta['self_mb']:.0f} MB + pool; "
                  f"{hta['n']} events)")
            print(f"speed-up {hta['s'] / ours['s']:.1f}x wall, {hta['cpu_s'] / ours['cpu_s']:.1f}x "
                  f"CPU; memory ratio {hta['rss_mb'] / ours['rss_mb']:.1f}x")


if __name__ == "__main__":
    main()
