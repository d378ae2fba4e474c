"""`dashboards.write_report`: one offline HTML page from one or several traces."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import analysis
from . import _insights
from ._findings import comm_share_pct, findings
from ._html import Page, esc, table_html

__all__ = ["write_report", "MAX_TIMELINE_EVENTS", "MAX_HEATMAP_COLUMNS"]

MAX_TIMELINE_EVENTS = 4000
MAX_HEATMAP_COLUMNS = 300
_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=40, b=50), height=400,
               legend=dict(orientation="h", y=-0.2))


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _run_label(path: str, ev: pd.DataFrame) -> str:
    ids = ev["run_id"].dropna().unique()
    return str(ids[0]) if len(ids) == 1 else os.path.basename(os.path.normpath(path))


def _overview(label: str, ev: pd.DataFrame, meta: list[dict]) -> dict:
    spans = ev.groupby("rank").agg(a=("t_start_ns", "min"), b=("t_end_ns", "max"))
    m0 = meta[0] if meta else {}
    gpus = m0.get("gpus", {})
    gpu = (", ".join(sorted({g.get("name", "?") for g in gpus.get("gpus", [])})) or "?") \
        if gpus.get("available") else "no GPU"
    v = m0.get("versions", {})
    return {"run": label, "ranks": int(ev["rank"].nunique()),
            "hosts": ", ".join(sorted({str(m.get("host")) for m in meta})) or "?",
            "torch": v.get("torch"), "commscope": v.get("commscope"), "nccl": v.get("nccl"),
            "gpus": gpu, "duration_s": float((spans["b"] - spans["a"]).max() / 1e9),
            "calls": int(len(ev)), "comm_share_pct": comm_share_pct(ev)}


def _fig(**kw: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(**{**_LAYOUT, **kw})
    return fig


def _by_op(summary: pd.DataFrame) -> pd.DataFrame:
    g = summary.groupby(["phase", "op", "pg_dim"], dropna=False).agg(
        calls=("calls", "sum"), bytes_total=("bytes_total", "sum"),
        total_time_us=("total_time_us", "sum")).reset_index()
    return g.sort_values("total_time_us", ascending=False)


def _timeline(ev: pd.DataFrame) -> go.Figure:
    t0 = ev["t_start_ns"].min()
    if len(ev) > MAX_TIMELINE_EVENTS:  # keep the longest calls and an even sample of the rest
        dur = ev["t_end_ns"] - ev["t_start_ns"]
        longest = ev.loc[dur.nlargest(MAX_TIMELINE_EVENTS // 2).index]
        rest = ev.drop(longest.index)
        step = max(1, len(rest) // (MAX_TIMELINE_EVENTS // 2))
        ev = pd.concat([longest, rest.iloc[::step]])
    fig = _fig(title=None, xaxis_title="time since first call (ms)", yaxis_title="rank",
               height=max(300, 40 * ev["rank"].nunique() + 150))
    for op, g in ev.groupby("op"):
        xs = np.empty(3 * len(g))
        ys = np.empty(3 * len(g))
        xs[0::3] = (g["t_start_ns"].to_numpy(float) - t0) / 1e6
        xs[1::3] = (g["t_end_ns"].to_numpy(float) - t0) / 1e6
        xs[2::3] = np.nan
        ys[0::3] = ys[1::3] = g["rank"].to_numpy(float)
        ys[2::3] = np.nan
        fig.add_trace(go.Scattergl(x=xs, y=ys, mode="lines", name=str(op), line=dict(width=9)))
    fig.update_yaxes(autorange="reversed", dtick=1)
    return fig


def _heatmap(waits: pd.DataFrame) -> go.Figure | None:
    if waits.empty:
        return None
    biggest = waits.groupby("pg_name")["rank"].nunique().idxmax()
    w = waits[waits["pg_name"] == biggest]
    seqs = np.sort(w["pg_seq"].unique())
    # Bin instances before pivoting (keeping each bin's worst wait): bounded size and time.
    per_bin = max(1, -(-len(seqs) // MAX_HEATMAP_COLUMNS))
    first_of_bin = seqs[::per_bin]
    col = np.searchsorted(seqs, w["pg_seq"].to_numpy()) // per_bin
    binned = pd.DataFrame({"rank": w["rank"].to_numpy(), "col": col,
                           "wait": w["wait_ns"].astype("float64").to_numpy()})
    piv = binned.groupby(["rank", "col"])["wait"].max().unstack("col")
    piv.columns = [int(first_of_bin[c]) for c in piv.columns]
    fig = _fig(xaxis_title=f"collective instance (pg_seq of group {biggest})",
               yaxis_title="rank")
    fig.add_trace(go.Heatmap(z=piv.to_numpy() / 1e6, x=[str(c) for c in piv.columns],
                             y=[str(r) for r in piv.index], colorscale="Reds",
                             colorbar=dict(title="wait (ms)")))
    return fig


def _for_backend(model: Any, ev: pd.DataFrame) -> Any:
    """The calibration's curves for the trace's backend: a model holding several libraries'
    curves (gloo and nccl) never mixes them; None when it has none for this backend."""
    if model is None or len(getattr(model, "libraries", ())) <= 1:
        return model
    backends = {str(b).lower() for b in ev["backend"].dropna().unique()}
    hits = [b for b in backends if b in model.libraries]
    return model.select(hits[0]) if len(hits) == 1 else None


def _latency(ev: pd.DataFrame, model: Any) -> tuple[go.Figure, go.Figure] | None:
    model = _for_backend(model, ev)
    m = analysis.match_collectives(ev)
    m = m[(m["bytes"] > 0) & (m["op"] != "barrier")]
    if m.empty:
        return None
    med = m.groupby(["op", "pg_size", "bytes"]).agg(
        time_us=("transfer_ns", lambda s: s.median() / 1e3),
        busbw=("busbw_GBps", "median")).reset_index()
    lat = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3],
                        vertical_spacing=0.06)
    bw = _fig(xaxis_title="message size (bytes, nccl-tests S)", yaxis_title="bus bandwidth (GB/s)")
    for (op, n), g in med.groupby(["op", "pg_size"]):
        name = f"{op} n={n}"
        lat.add_trace(go.Scatter(x=g["bytes"], y=g["time_us"], mode="markers", name=name),
                      row=1, col=1)
        bw.add_trace(go.Scatter(x=g["bytes"], y=g["busbw"], mode="markers+lines", name=name))
        if model is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", analysis.CostModelWarning)
                try:
                    xs = np.geomspace(g["bytes"].min(), g["bytes"].max(), 60)
                    lat.add_trace(go.Scatter(x=xs, y=[model.predict(op, int(n), x) for x in xs],
                                             mode="lines", name=f"{name} model"), row=1, col=1)
                    pred = np.array([model.predict(op, int(n), x) for x in g["bytes"]])
                    lat.add_trace(go.Scatter(x=g["bytes"], y=100 * (pred - g["time_us"]) /
                                             g["time_us"], mode="markers",
                                             name=f"{name} residual"), row=2, col=1)
                except (KeyError, ValueError):  # no curve for this op / group size
                    pass
    lat.update_layout(**{**_LAYOUT, "height": 520})
    lat.update_xaxes(type="log", title_text="message size (bytes, nccl-tests S)", row=2, col=1)
    lat.update_xaxes(type="log", row=1, col=1)
    lat.update_yaxes(type="log", title_text="transfer time (us)", row=1, col=1)
    lat.update_yaxes(title_text="residual (%)", row=2, col=1)
    bw.update_xaxes(type="log")
    return lat, bw


def write_report(source: Any, out_html: str | os.PathLike, *, calibration: Any = None,
                 model: Any = None, workload: Any = None, config: Any = None,
                 nccl_logs: Any = None, title: str | None = None,
                 characterization: Any = None) -> str:
    """Write a self-contained HTML report of one trace folder or a list of them (compared side by
    side). It opens with Findings (sentences computed from the data, each linking to its
    evidence). `calibration`: a cost model or its JSON path (curves and predictions); `model`,
    `workload`, `config` (one per source, or one for all): predicted vs measured and the
    advisor's what-if table; `nccl_logs`: NCCL debug logs (warnings, topology, transports);
    `characterization`: the `commscope characterize` table (DataFrame or CSV path): TTFT, TPOT
    and bytes per token vs prompt length, held-out model accuracy. Returns the path written."""
    sources = [os.fspath(s) for s in _as_list(source)]
    if isinstance(calibration, (str, os.PathLike)):
        calibration = analysis.CostModel.load(os.fspath(calibration))
    if isinstance(model, str):
        model = analysis.ModelSpec.from_preset(model)
    configs = _as_list(config) if config is not None else [None]
    if len(configs) == 1:
        configs = configs * len(sources)
    runs = []
    for path, cfg in zip(sources, configs):
        ev = analysis.load_events(path)
        runs.append((path, _run_label(path, ev), ev, analysis.load_metadata(path), cfg))
    page = Page(title or f"commscope report — {', '.join(r[1] for r in runs)}",
                f"{sum(len(r[2]) for r in runs):,} events from {len(runs)} run(s). "
                f"Times per rank; GB = 1e9 bytes; {analysis.BUSBW_DEFINITION}.")
    empty = [r for r in runs if r[2].empty]
    if empty:
        # A run without communication (e.g. an imported trace that had none) gets a reason,
        # not a section of empty plots.
        s = page.section("empty", "Runs without communication")
        for path, label, _ev, meta, _ in empty:
            notes = [n for m in meta for n in (m.get("import_notes") or [])]
            s.append(f"<p>{esc(label)} ({esc(path)}): no communication call recorded."
                     + (" " + esc("; ".join(dict.fromkeys(map(str, notes)))) if notes else "")
                     + "</p>")
        runs = [r for r in runs if not r[2].empty]
        if not runs:
            return _write_page(page, out_html)

    char = _insights.load_characterization(characterization)
    has_cfg = any(c is not None for *_, c in runs)
    predicted = model is not None and workload is not None and has_cfg
    anchors = {"time", "latency", "skew", "overlap"}
    anchors |= {"compare"} if predicted else set()
    anchors |= {"whatif"} if predicted and calibration is not None else set()
    anchors |= {"characterization", "accuracy"} if char is not None and len(char) else set()
    found = findings([(label, ev, cfg) for _, label, ev, _, cfg in runs], characterization=char,
                     calibration=calibration, model=model, workload=workload)
    _insights.findings_section(page, found, anchors)
    if "whatif" in anchors:
        cfg = max((r[4] for r in runs if r[4] is not None), key=lambda c: c.tp * c.pp * c.dp)
        mine = None
        if char is not None and len(char):
            hit = char[(char["tp"] == cfg.tp) & (char["pp"] == cfg.pp)
                       & (char["prompt_len"] == workload.prompt_len)]
            mine = float(hit["measured_comm_us_per_token"].iloc[0]) if len(hit) else None
        _insights.whatif_section(page, cfg.tp * cfg.pp * cfg.dp, model, workload, calibration,
                                 cfg.label(), mine)
    if "characterization" in anchors:
        _insights.characterization_section(page, char)
        _insights.accuracy_section(page, char, calibration)

    ov = pd.DataFrame([_overview(label, ev, meta) for _, label, ev, meta, _ in runs])
    s = page.section("overview", "Run overview")
    s.append("<p class='note'>comm_share_pct: time inside communication calls over wall time "
             "(first call to last completion), averaged over ranks.</p>")
    s.append(table_html(ov))
    for _, label, _ev, meta, _ in runs:
        gpus = meta[0].get("gpus", {}) if meta else {}
        if gpus.get("available"):
            s.append(f"<p class='note'>{esc(label)} GPUs and topology:</p>")
            s.append(table_html(pd.DataFrame(gpus.get("gpus", [])).drop(columns=["nvlinks"],
                                                                          errors="ignore")))
            s.append(table_html(pd.DataFrame(gpus.get("topology", []))))

    summaries = {label: analysis.summarize(ev) for _, label, ev, _, _ in runs}
    s = page.section("time", "Time and bytes by operation, dimension and phase")
    s.append("<p class='note'>total_time_us: sum over all ranks of call durations "
             "(t_end - t_start); bytes_total: nccl-tests size S summed over calls.</p>")
    for label, summ in summaries.items():
        by = _by_op(summ)
        fig = _fig(barmode="stack", yaxis_title="time, all ranks (ms)", title=str(label))
        for dim, g in by.groupby("pg_dim"):
            fig.add_trace(go.Bar(x=g["phase"] + " / " + g["op"], y=g["total_time_us"] / 1e3,
                                 name=f"dim {dim}"))
        page.figure(s, fig)
        s.append(table_html(by))

    s = page.section("sizes", "Message sizes")
    for label, summ in summaries.items():
        fig = _fig(barmode="group", xaxis_title="size bucket (power of two above the size)",
                   yaxis_title="calls", title=str(label))
        order = summ.assign(_b=summ["bytes_total"] / summ["calls"]).sort_values("_b")
        for op, g in order.groupby("op", sort=False):
            fig.add_trace(go.Bar(x=g["size_bucket"], y=g["calls"], name=str(op)))
        fig.update_xaxes(categoryorder="array", categoryarray=list(dict.fromkeys(
            order["size_bucket"])))
        page.figure(s, fig)
        s.append(table_html(summ))

    s = page.section("latency", "Latency and bus bandwidth vs message size")
    s.append("<p class='note'>Median transfer time per size (from the last rank's arrival to "
             "the first completion, see analysis.match_collectives)"
             + (", the calibrated cost model's curve and its residuals." if calibration
                else "; pass a calibration to overlay the cost model.") + "</p>")
    for _, _label, ev, _, _ in runs:
        figs = _latency(ev, calibration)
        if figs:
            page.figure(s, figs[0])
            page.figure(s, figs[1])

    if predicted:
        s = page.section("compare", "Predicted vs measured")
        s.append("<p class='note'>Per rank; decode per generated token. Counts and bytes from "
                 "analysis.predict_schedule, measured from the trace (analysis.compare); "
                 "time_error_pct = (predicted - measured) / measured in %.</p>")
        for _, label, ev, _, cfg in runs:
            if cfg is None:
                continue
            c = analysis.compare(ev, model, workload, cfg, calibration)
            fig = _fig(barmode="group", yaxis_title="calls per rank",
                       title=f"{label}: {cfg.label()}")
            key = c["phase"] + " / " + c["op"] + " / " + c["bytes"].astype(str) + " B"
            fig.add_trace(go.Bar(x=key, y=c["predicted_count"], name="predicted"))
            fig.add_trace(go.Bar(x=key, y=c["measured_count"], name="measured"))
            page.figure(s, fig)
            c = c.assign(time_error_pct=100 * c["time_error"]).drop(columns=["what",
                                                                              "time_error"])
            s.append(table_html(c))

    s = page.section("timeline", "Per-rank timeline")
    s.append(f"<p class='note'>Each bar is one call (zoom with the mouse). Traces with more "
             f"than {MAX_TIMELINE_EVENTS:,} calls show the longest half and an even sample "
             f"of the rest.</p>")
    for _, label, ev, _, _ in runs:
        page.figure(s, _timeline(ev).update_layout(title=str(label)))

    s = page.section("skew", "Skew and stragglers")
    s.append("<p class='note'>Heatmap: time each rank waited for the last arrival (ms), per "
             "collective instance of the largest group; table: analysis.stragglers.</p>")
    for _, label, ev, _, _ in runs:
        hm = _heatmap(analysis.collective_waits(ev))
        if hm is not None:
            page.figure(s, hm.update_layout(title=str(label)))
        s.append(table_html(analysis.stragglers(ev)))

    s = page.section("overlap", "Overlap of asynchronous communication")
    for _, label, ev, _, _ in runs:
        ov_df = analysis.overlap(ev)
        if len(ov_df):
            fig = _fig(barmode="stack", yaxis_title="time (ms)", title=str(label))
            x = ov_df["phase"] + " / " + ov_df["op"]
            fig.add_trace(go.Bar(x=x, y=ov_df["exposed_ns"] / 1e6, name="exposed (in wait)"))
            fig.add_trace(go.Bar(x=x, y=ov_df["hidden_ns"] / 1e6, name="hidden"))
            page.figure(s, fig)
        s.append(table_html(ov_df))

    s = page.section("problems", "Mismatches and NCCL warnings")
    for _, label, ev, _, _ in runs:
        s.append(f"<p class='note'>{esc(label)}: first disagreement per group</p>")
        s.append(table_html(analysis.find_mismatches(ev)))
    log = None
    if nccl_logs:
        from ..profiler import parse_nccl_logs

        log = parse_nccl_logs(_as_list(nccl_logs))
        s.append("<p class='note'>NCCL WARN lines</p>")
        s.append(table_html(log.warnings))
        s2 = page.section("nccl", "NCCL topology and transports")
        s2.append(f"<p class='note'>{esc(log.summary_text()).replace(chr(10), '<br>')}</p>")
        s2.append(table_html(log.communicators.drop(columns=["source"], errors="ignore")))
        s2.append(table_html(log.topology.groupby(["kind", "transport"], dropna=False).size()
                             .rename("lines").reset_index()))

    if len(runs) > 1:
        s = page.section("runs", "Runs side by side")
        fig = _fig(barmode="group", yaxis_title="communication time per rank (ms)")
        for _, label, ev, _, _ in runs:
            summ = summaries[label]
            by = summ.groupby(["phase", "op"]).agg(t=("total_time_us", "sum")).reset_index()
            n = ev["rank"].nunique()
            fig.add_trace(go.Bar(x=by["phase"] + " / " + by["op"], y=by["t"] / 1e3 / n,
                                 name=str(label)))
        page.figure(s, fig)
        s.append(table_html(ov))

    return _write_page(page, out_html)


def _write_page(page: Page, out_html: str | os.PathLike) -> str:
    out = os.fspath(out_html)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(page.render())
    return out
