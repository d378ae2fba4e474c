"""Model-driven commands: `calibrate`, `predict`, `compare`, `advise` (and their shared options)."""

from __future__ import annotations

import argparse
import os


def _model(args: argparse.Namespace):
    from commscope.analysis import ModelSpec

    name = args.model
    if os.path.exists(name):
        return ModelSpec.from_hf_config(name)
    return ModelSpec.from_preset(name)


def _config(args: argparse.Namespace):
    from commscope.analysis import TP2D, ParallelConfig

    tp2d = None
    if getattr(args, "tp2d_rows", None):
        rows = tuple(int(x) for x in args.tp2d_rows.split(","))
        cols = tuple(int(x) for x in args.tp2d_cols.split(",")) if args.tp2d_cols else None
        if cols is None:
            raise ValueError("--tp2d-rows needs --tp2d-cols")
        tp2d = TP2D(rows, cols)
    return ParallelConfig(tp=args.tp, pp=args.pp, dp=args.dp, ep=args.ep,
                          sequence_parallel=args.sp, tp2d=tp2d)


def _workload(args: argparse.Namespace):
    from commscope.analysis import Workload

    return Workload(args.batch, args.prompt, args.output)


def _cost_model(args: argparse.Namespace):
    from commscope.analysis import CostModel

    return CostModel.load(args.calibration) if args.calibration else None


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import warnings

    from commscope.analysis import CostModel, CostModelWarning, load_measurements

    m = load_measurements(args.inputs)
    model = CostModel.fit(m, max_pieces=args.max_pieces)
    model.save(args.out)
    print(f"{len(m):,} measurements from {len(args.inputs)} input(s); "
          f"{len(model.fits)} curves (op x group size x nodes x library)")
    q = model.quality
    print(q.round(2).to_string(index=False))
    o = model.provenance["quality"]
    print(f"fit error on the measured sizes: median {o['median_abs_pct']:.2f} %, "
          f"p90 {o['p90_abs_pct']:.2f} %, max {o['max_abs_pct']:.2f} %")
    if args.holdout:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CostModelWarning)
            h = CostModel.holdout(m, k=args.holdout, max_pieces=args.max_pieces)
        e = h["rel_error"].abs() * 100
        print(f"{args.holdout}-fold held-out error over {len(h)} sizes: median {e.median():.2f} %,"
              f" p90 {e.quantile(0.9):.2f} %, max {e.max():.2f} %")
    print(f"wrote {args.out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from commscope.analysis import predict_schedule

    model, cfg, wl = _model(args), _config(args), _workload(args)
    s = predict_schedule(model, wl, cfg, _cost_model(args), pp_sends=args.pp_sends)
    print(f"{model.name}, {cfg.label()}, batch {wl.batch}, prompt {wl.prompt_len}, "
          f"output {wl.output_len}; counts per rank, decode per generated token")
    print(s.drop(columns="what").to_string(index=False))
    for phase in ("prefill", "decode"):
        p = s[s["phase"] == phase]
        print(f"{phase}: {(p['bytes'] * p['count']).sum() / 1e6:,.3f} MB per rank, "
              f"{p['predicted_us'].sum(min_count=1):,.1f} us predicted")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from commscope import analysis

    ev = analysis.load_events(args.trace)
    c = analysis.compare(ev, _model(args), _workload(args), _config(args), _cost_model(args),
                         pp_sends=args.pp_sends)
    print(c.drop(columns="what").to_string(index=False))
    matched = c[c["status"] == "matched"]
    exact = (matched["count_error"].abs() < 1e-9).all() and len(matched) == len(c)
    print(f"{len(matched)} of {len(c)} (phase, op, dim, bytes) rows matched; counts "
          + ("agree exactly" if exact else "differ (see count_error and status)"))
    return 0


def _cmd_advise(args: argparse.Namespace) -> int:
    import pandas as pd

    from commscope import analysis

    a = analysis.advise(args.devices, _model(args), _workload(args), _cost_model(args),
                        device_memory_gb=args.memory_gb, max_pp=args.max_pp)
    shown = a.drop(columns="why").copy()
    print(shown.to_string(index=False))
    for r in a.itertuples():
        label = "--" if pd.isna(r.rank) else f"#{r.rank}"
        print(f"{label} {r.config}: {r.why}")
    return 0


def model_args(sp: argparse.ArgumentParser, config: bool = True) -> None:
    sp.add_argument("--model", required=True, help="preset name or a config.json path")
    sp.add_argument("--batch", type=int, default=1)
    sp.add_argument("--prompt", type=int, default=512, help="prompt length (tokens)")
    sp.add_argument("--output", type=int, default=128, help="generated tokens")
    sp.add_argument("--calibration", help="cost model JSON from `commscope calibrate`")
    if config:
        sp.add_argument("--tp", type=int, default=1)
        sp.add_argument("--pp", type=int, default=1)
        sp.add_argument("--dp", type=int, default=1)
        sp.add_argument("--ep", type=int, default=1)
        sp.add_argument("--sp", action="store_true", help="sequence parallelism")
        sp.add_argument("--tp2d-rows", help="2D TP row group sizes, e.g. 4,2")
        sp.add_argument("--tp2d-cols", help="2D TP column group sizes, e.g. 2,2,2")
        sp.add_argument("--pp-sends", choices=("hidden", "hidden+residual"),
                        default="hidden", help="what a PP stage sends (default hidden)")


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calibrate", help="fit a cost model from traces, nccl-tests or tables",
                       description="Fit the piecewise alpha-beta cost model and print its "
                                   "quality (and k-fold held-out error with --holdout K).")
    c.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="commscope trace folders, nccl-tests outputs, .csv/.parquet tables")
    c.add_argument("-o", "--out", required=True, help="calibration JSON to write")
    c.add_argument("--holdout", type=int, default=0, metavar="K", help="k-fold held-out error")
    c.add_argument("--max-pieces", type=int, default=5, help="size ranges per curve (default 5)")
    c.set_defaults(func=_cmd_calibrate)

    pr = sub.add_parser("predict", help="the collectives a configuration must issue",
                        description="Print the predicted per-rank schedule of one prefill and "
                                    "one decode step.")
    model_args(pr)
    pr.set_defaults(func=_cmd_predict)

    co = sub.add_parser("compare", help="a trace against its predicted schedule",
                        description="Predicted vs measured count, bytes and time per (phase, "
                                    "op, pg_dim, bytes).")
    co.add_argument("trace")
    model_args(co)
    co.set_defaults(func=_cmd_compare)

    ad = sub.add_parser("advise", help="rank parallel configurations for N devices",
                        description="Valid configurations ranked by predicted communication "
                                    "time per decoded token and per prefill.")
    ad.add_argument("--devices", type=int, required=True)
    ad.add_argument("--memory-gb", type=float, default=80.0, help="memory per device")
    ad.add_argument("--max-pp", type=int, default=None)
    model_args(ad, config=False)
    ad.set_defaults(func=_cmd_advise)
