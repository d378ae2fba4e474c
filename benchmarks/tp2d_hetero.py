"""Emulated heterogeneous 2D TP on gloo: predicted vs measured layer time, symmetric vs chosen.

    .venv/bin/python benchmarks/tp2d_hetero.py                  # ~2-4 minutes on 2 cores
    .venv/bin/python benchmarks/tp2d_hetero.py --layer-us 50000 --slow 0.25 --repeats 3

Three gloo ranks stand for two devices of capability 1 on node "a" and one of capability
`--slow` on node "b". A device's compute is emulated: per layer each rank sleeps
layer_us x (its share of the MLP columns) / capability (the tiny model's own compute is
negligible next to it). Steps, all in this one run:
1. Calibrate gloo on this host: an nccl-tests-like sweep (2 and 3 ranks; all_reduce,
   all_gather, reduce_scatter) fitted with CostModel; the one host has one link class, so the
   same model serves as "intra" and "inter".
2. `advise_tp2d` ranks the layouts (decode step) with compute_us_per_layer = layer_us.
3. The best symmetric layout, the chosen one and (when different) the best layout with uneven
   row groups run on `commscope.models.llama2d` with those emulated delays, `--repeats` times,
   interleaved (so they share the host's noise); the measured layer time is the median over
   ranks, decode layers and runs of each layer's wall time (from the layer's start to the end
   of its last collective).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import warnings

from commscope import analysis
from commscope.models import llama2d
from commscope.models.llama import Config
from commscope.profiler._bench import sweep


def _layer_us(run_dir: str, layers: int) -> list[float]:
    with open(os.path.join(run_dir, "layers.json")) as fh:
        ranks = json.load(fh)["ranks"]
    # Skip the prefill forward (the first `layers` entries of every rank).
    return [ns / 1e3 for r in ranks for ns in r["layer_ns"][layers:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer-us", type=float, default=100000.0,
                    help="emulated compute of one layer on a capability-1 device")
    ap.add_argument("--slow", type=float, default=0.5, help="capability of the slow device")
    ap.add_argument("--output", type=int, default=6, help="generated tokens per run")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs per layout")
    ap.add_argument("--out", default=None, help="folder for traces (default: a temp folder)")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="tp2d_hetero_")
    cfg = Config(intermediate_size=160)  # 160 MLP columns split 2:2:1 exactly (64, 64, 32)
    spec = cfg.spec(8)
    wl = analysis.Workload(batch=2, prompt_len=16, output_len=a.output)
    devices = [dict(node="a", capability=1.0, memory_gb=16.0),
               dict(node="a", capability=1.0, memory_gb=16.0),
               dict(node="b", capability=a.slow, memory_gb=16.0)]

    runs = [sweep(out, world_size=n, ops=("all_reduce", "all_gather", "reduce_scatter"),
                  min_bytes=256, max_bytes=4096, iters=20, warmup=5, dtype="float64",
                  run_name=f"sweep{n}") for n in (2, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = analysis.CostModel.fit(analysis.load_measurements(runs))
    advice = analysis.advise_tp2d(devices, spec, wl, {"intra": cm, "inter": cm},
                                  compute_us_per_layer=a.layer_us)
    print(f"advise_tp2d (decode, T={wl.decode_tokens}, h={cfg.hidden_size}, float64; "
          f"layer compute {a.layer_us:,.0f} us at capability 1; slow device {a.slow}):")
    print(advice.drop(columns=["bottleneck", "groups", "cols"]).round(1).to_string(index=False))

    picks = {"best symmetric": advice[advice["symmetric"]].iloc[0], "chosen": advice.iloc[0]}
    uneven = advice[advice["rows"].map(lambda r: len(set(r)) > 1)]
    if len(uneven) and uneven.index[0] != 0:
        picks["best uneven rows"] = uneven.iloc[0]
    caps = [d["capability"] for d in devices]
    samples: dict[str, list[float]] = {label: [] for label in picks}
    for rep in range(a.repeats):
        for label, row in picks.items():
            split = None if row["split"] == "equal" else caps
            shares = [c / cfg.intermediate_size for c in
                      llama2d.proportional_split(cfg.intermediate_size, split or [1.0] * 3)]
            delays = [a.layer_us * s / c for s, c in zip(shares, caps)]
            run_dir, _ = llama2d.run(row["rows"], out=out, split=split, delays_us=delays,
                                     batch=wl.batch, prompt=wl.prompt_len, output=wl.output_len,
                                     model=cfg, run_name=f"{label.replace(' ', '_')}_{rep}")
            samples[label] += _layer_us(run_dir, cfg.num_layers)
    lines = [(label, row, statistics.median(samples[label])) for label, row in picks.items()]
    print()
    print("| layout | rows | work split | predicted layer us (compute + comm) | measured layer us "
          "(minus predicted compute) | error |")
    print("|---|---|---|---|---|---|")
    for label, row, meas in lines:
        pred = row["predicted_layer_us"]
        print(f"| {label} | {tuple(row['rows'])} | {row['split']} | {pred:,.0f} "
              f"({row['compute_us']:,.0f} + {row['comm_us']:,.0f}) | {meas:,.0f} "
              f"({meas - row['compute_us']:,.0f}) | {(pred - meas) / meas * 100:+.1f} % |")
    (_, _, s_meas), (_, c_row, c_meas) = lines[0], lines[1]
    print(f"\nchosen vs best symmetric: predicted {c_row['gain_vs_best_symmetric_pct']:.1f} % "
          f"lower, measured {(s_meas - c_meas) / s_meas * 100:.1f} % lower (this run)")
    print(f"traces: {out}")


if __name__ == "__main__":
    main()
