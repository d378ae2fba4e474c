"""Model-driven commands: `calibrate`, `predict`, `compare`, `advise` (and their shared options)."""

from __future__ import annotations

import argparse
import os
import sys


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
        # Column groups follow from the rows; a given --tp2d-cols is checked against them.
        cols = tuple(int(x) for x in args.tp2d_cols.split(",")) if args.tp2d_cols else ()
        tp2d = TP2D(rows, cols)
    return ParallelConfig(tp=args.tp, pp=args.pp, dp=args.dp, ep=args.ep,
                          sequence_parallel=args.sp, tp2d=tp2d)


def _workload(args: argparse.Namespace):
    from commscope.analysis import Workload

    return Workload(args.batch, args.prompt, args.output)


def _cost_model(args: argparse.Namespace):
    from commscope.analysis import CostModel

    if not args.calibration:
        return None
    return CostModel.load(args.calibration, library=getattr(args, "library", None))


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import warnings

    from commscope.analysis import CostModel, CostModelWarning, load_measurements

    m = load_measurements(args.inputs)
    if m.empty:
        print(f"commscope calibrate: no collective measurements in {', '.join(args.inputs)}",
              file=sys.stderr)
        return 1
    opts = dict(max_pieces=args.max_pieces, min_points=args.min_points)
    model = CostModel.fit(m, **opts)
    model.save(args.out)
    print(f"{len(m):,} measurements from {len(args.inputs)} input(s); "
          f"{len(model.fits)} curves (op x group size x nodes x library); "
          f"libraries {', '.join(model.libraries)}")
    # Where each curve came from (sweep, trace, nccl-tests, table, aiconfigurator; device or
    # host time; how many runs): the same provenance the JSON keeps per curve.
    print(model.curves().to_string(index=False))
    q = model.quality
    print(q.round(2).to_string(index=False))
    o = model.provenance["quality"]
    print(f"fit error on the measured sizes: median {o['median_abs_pct']:.2f} %, "
          f"p90 {o['p90_abs_pct']:.2f} %, max {o['max_abs_pct']:.2f} %")
    if args.holdout:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CostModelWarning)  # held-out sizes: by design
            h = CostModel.holdout(m, k=args.holdout, **opts)
        e = h["rel_error"].abs() * 100
        print(f"{args.holdout}-fold held-out error over {len(h)} sizes: median {e.median():.2f} %,"
              f" p90 {e.quantile(0.9):.2f} %, max {e.max():.2f} %")
    if len(model.libraries) > 1:
        print(f"note: curves of {len(model.libraries)} libraries; predictions need one "
              f"(CostModel.load(path, library=...))")
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

    try:  # --devices: a count, or with --tp2d a devices file
        devices = int(args.devices)
    except ValueError:
        devices = None
    if args.tp2d:
        if devices is not None:
            raise ValueError("--tp2d needs --devices FILE (a devices JSON file), not a count")
        return _advise_tp2d(args)
    if devices is None:
        raise ValueError(f"--devices {args.devices!r}: a device count (an integer); a devices "
                         f"file needs --tp2d")
    a = analysis.advise(devices, _model(args), _workload(args), _cost_model(args),
                        device_memory_gb=args.memory_gb, max_pp=args.max_pp)
    shown = a.drop(columns="why").copy()
    print(shown.to_string(index=False))
    for r in a.itertuples():
        label = "--" if pd.isna(r.rank) else f"#{r.rank}"
        print(f"{label} {r.config}: {r.why}")
    return 0


def _advise_tp2d(args: argparse.Namespace) -> int:
    from commscope import analysis
    from commscope.analysis import CostModel
    from commscope.analysis._advise2d import load_devices

    spec = load_devices(args.devices)
    models = spec["cost_models"]
    for link in ("intra", "inter"):  # command-line calibrations override the file's
        path = getattr(args, f"calibration_{link}") or args.calibration
        if path:
            models[link] = CostModel.load(path, library=args.library)
    if not models:
        raise ValueError(f"{args.devices}: no cost models (give cost_models in the file, "
                         f"--calibration, or --calibration-intra / --calibration-inter)")
    compute = (args.compute_us_per_layer if args.compute_us_per_layer is not None
               else spec.get("compute_us_per_layer"))
    a = analysis.advise_tp2d(spec["devices"], _model(args), _workload(args), models,
                             phase=args.phase, compute_us_per_layer=compute,
                             tflops_per_capability=spec.get("tflops_per_capability", 100.0))
    print(a.drop(columns="bottleneck").round(3).to_string(index=False))
    best = a.iloc[0]
    sym = a[a["symmetric"]]
    print(f"chosen: rows={list(best['rows'])} cols={list(best['cols'])} split={best['split']}: "
          f"{best['predicted_layer_us']:,.1f} us per layer ({args.phase}); "
          f"{best['gain_vs_best_symmetric_pct']:.1f} % below the best symmetric layout"
          + (f" rows={list(sym.iloc[0]['rows'])}" if len(sym) else ""))
    print(f"bottleneck: {best['bottleneck']}")
    return 0


def model_args(sp: argparse.ArgumentParser, config: bool = True) -> None:
    sp.add_argument("--model", required=True, help="preset name or a config.json path")
    sp.add_argument("--batch", type=int, default=1)
    sp.add_argument("--prompt", type=int, default=512, help="prompt length (tokens)")
    sp.add_argument("--output", type=int, default=128, help="generated tokens")
    sp.add_argument("--calibration", help="cost model JSON from `commscope calibrate`")
    sp.add_argument("--library", help="use only this library's curves of the calibration "
                                      "(e.g. nccl, gloo) when it holds several")
    if config:
        sp.add_argument("--tp", type=int, default=1)
        sp.add_argument("--pp", type=int, default=1)
        sp.add_argument("--dp", type=int, default=1)
        sp.add_argument("--ep", type=int, default=1)
        sp.add_argument("--sp", action="store_true", help="sequence parallelism")
        sp.add_argument("--tp2d-rows", help="2D TP row group sizes, e.g. 4,2")
        sp.add_argument("--tp2d-cols", help="optional check: the column group sizes the rows "
                                            "give, e.g. 2,2,2,2 for rows 4,2")
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
    c.add_argument("--min-points", type=int, default=3,
                   help="measured sizes per range (default 3, at least 2)")
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
                                    "time per decoded token and per prefill; with --tp2d, 2D "
                                    "TP layouts (uneven groups) for a devices file.")
    ad.add_argument("--devices", required=True,
                    help="device count, or with --tp2d a devices JSON file (see README)")
    ad.add_argument("--tp2d", action="store_true",
                    help="choose a 2D TP layout (row/column groups) for heterogeneous devices")
    ad.add_argument("--calibration-intra", help="--tp2d: cost model of links within a node")
    ad.add_argument("--calibration-inter", help="--tp2d: cost model of links across nodes")
    ad.add_argument("--phase", choices=("decode", "prefill"), default="decode",
                    help="--tp2d: the step whose layer time is minimised (default decode)")
    ad.add_argument("--compute-us-per-layer", type=float, default=None,
                    help="--tp2d: one layer's compute time on a device of capability 1")
    ad.add_argument("--memory-gb", type=float, default=80.0, help="memory per device")
    ad.add_argument("--max-pp", type=int, default=None)
    model_args(ad, config=False)
    ad.set_defaults(func=_cmd_advise)
