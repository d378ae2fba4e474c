"""Interchange commands: `import` (Kineto, Flight Recorder, NCCL Inspector -> dataset) and
`export` (dataset -> Chrome trace-event JSON for Perfetto)."""

from __future__ import annotations

import argparse


def _cmd_import(args: argparse.Namespace) -> int:
    from commscope import analysis, profiler

    run_dir = profiler.import_trace(args.paths, args.out, format=args.format,
                                    run_name=args.run_name)
    metas = sorted(analysis.load_metadata(run_dir), key=lambda m: m["rank"])
    rows = sum(int(m.get("events_written") or 0) for m in metas)
    fmt = metas[0]["import"]["format"] if metas else "?"
    print(f"imported {len(metas)} rank(s), {rows} calls ({fmt}) -> {run_dir}")
    for m in metas:
        spread = m.get("clock_offset_spread_ns")
        align = (f", clock offset {m['clock_offset_ns'] / 1e3:.1f} us "
                 f"(error <= {spread / 1e3:.1f} us)" if spread else "")
        print(f"  rank {m['rank']}: {m.get('events_written')} calls{align}")
        for note in m.get("import_notes") or []:
            print(f"    note: {note}")
    if metas and metas[0]["import"].get("skipped"):
        print(f"  skipped (not {fmt}): {', '.join(metas[0]['import']['skipped'])}")
    if fmt == "flight-recorder":
        hang = analysis.attribute_hang(run_dir)
        if hang.empty:
            print("hang attribution: every group's members issued and completed alike")
        for rec in hang.to_dict("records"):
            print(f"  {rec['kind']}: {rec['detail']}")
        if hang.attrs.get("faulted_ranks"):
            print(f"faulted ranks (from the dumps): {hang.attrs['faulted_ranks']}")
    if rows == 0:
        print("no communication calls were found (see the notes above)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from commscope import dashboards

    out = dashboards.export_perfetto(args.trace, args.out)
    print(f"wrote {out} (open in https://ui.perfetto.dev or chrome://tracing)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    im = sub.add_parser("import", help="convert Kineto / Flight Recorder / NCCL Inspector "
                                       "output into a commscope dataset",
                        description="Files, folders, .gz and .tar.gz of per-rank files; the "
                                    "rank is read from each file's content.")
    im.add_argument("paths", nargs="+", metavar="PATH")
    im.add_argument("--out", required=True, help="folder to write the run into")
    im.add_argument("--format", default="auto",
                    choices=["auto", "kineto", "flight-recorder", "nccl-inspector"])
    im.add_argument("--run-name", help="run folder name (default: from the first input)")
    im.set_defaults(func=_cmd_import)

    ex = sub.add_parser("export", help="write a trace as Chrome trace-event JSON (Perfetto)",
                        description="One process per rank, one track per process group, "
                                    "device-time slices where present.")
    ex.add_argument("trace", help="a run folder")
    ex.add_argument("-o", "--out", required=True, help="JSON file to write")
    ex.set_defaults(func=_cmd_export)
