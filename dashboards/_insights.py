"""Report sections that answer before they show: Findings, what-if, characterization over
prompt lengths and model accuracy (held-out, with transfer / wait / host-scheduling split)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from ._findings import what_if
from ._html import Page, esc, table_html

__all__ = ["findings_section", "whatif_section", "characterization_section",
           "accuracy_section", "load_characterization"]

_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=40, b=50), height=380,
               legend=dict(orientation="h", y=-0.25))


def load_characterization(table: Any) -> pd.DataFrame | None:
    """A characterization DataFrame, or read from its CSV path."""
    if table is None or isinstance(table, pd.DataFrame):
        return table
    return pd.read_csv(table)


def findings_section(page: Page, found: list[dict], anchors: set[str]) -> None:
    s = page.section("findings", "Findings")
    items = []
    for f in found:
        link = (f" <a href='#{esc(f['anchor'])}'>evidence</a>" if f["anchor"] in anchors else "")
        items.append(f"<li data-finding='{esc(f['key'])}'>{esc(f['text'])}{link}</li>")
    s.append("<ul class='findings'>" + "".join(items) + "</ul>" if items
             else "<p class='note'>(nothing to report)</p>")


def whatif_section(page: Page, devices: int, model: Any, workload: Any, calibration: Any,
                   measured: str, measured_us: float | None) -> None:
    s = page.section("whatif", "What if: the advisor's top configurations")
    w = what_if(devices, model, workload, calibration, measured)
    if measured_us is not None:
        w["measured_decode_us_per_token"] = [measured_us if m else None for m in w["measured"]]
    s.append(f"<p class='note'>{devices} devices, batch {workload.batch}, prompt "
             f"{workload.prompt_len}, output {workload.output_len}; predicted communication per "
             f"rank from the calibrated model: decode per token (µs), prefill (µs), bytes per "
             f"rank. The measured configuration is marked.</p>")
    s.append(table_html(w.drop(columns=["why"]), collapse_rows=50))
    s.append("<ul>" + "".join(f"<li>{esc(r.config)}: {esc(r.why)}</li>" for r in w.itertuples())
             + "</ul>")


def _lines(t: pd.DataFrame, col: str, title: str, ytitle: str, log_y: bool = False) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(**_LAYOUT, title=title, xaxis_title="prompt length (tokens)",
                      yaxis_title=ytitle)
    for label, g in t.groupby("label", sort=False):
        g = g.sort_values("prompt_len")
        fig.add_trace(go.Scatter(x=g["prompt_len"], y=g[col], mode="lines+markers",
                                 name=str(label)))
    fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def characterization_section(page: Page, t: pd.DataFrame) -> None:
    from ..characterize import conclusions

    s = page.section("characterization", "TTFT, TPOT and bytes per token vs prompt length")
    s.append("<p class='note'>Per configuration (HotI'25 study): time to first token and time "
             "per output token (rank 0 wall clock, ms), bytes communicated per rank (nccl-tests "
             "size S, KB = 1e3 B) per prefill and per decode step, share of time in "
             "communication calls (%).</p>")
    kb = t.assign(prefill_kb=t["prefill_bytes_per_rank"] / 1e3,
                  decode_kb=t["decode_bytes_per_token_per_rank"] / 1e3)
    page.figure(s, _lines(kb, "ttft_ms", "time to first token", "TTFT (ms)"))
    page.figure(s, _lines(kb, "tpot_ms", "time per output token", "TPOT (ms)"))
    page.figure(s, _lines(kb, "prefill_kb", "prefill bytes per rank", "KB per rank", True))
    page.figure(s, _lines(kb, "decode_kb", "decode bytes per token per rank", "KB per rank"))
    page.figure(s, _lines(kb, "comm_share_pct", "communication share of time", "%"))
    items = []
    for c in conclusions(t):
        verdict = {True: "holds", False: "does not hold", None: "not tested"}[c["holds"]]
        items.append(f"<li><b>{esc(c['claim'])}</b>: {verdict} — {esc(c['evidence'])}</li>")
    s.append("<p class='note'>The paper's conclusions, checked on these numbers:</p><ul>"
             + "".join(items) + "</ul>")
    s.append(table_html(t.drop(columns=["trace"], errors="ignore"), collapse_rows=0))


def accuracy_section(page: Page, t: pd.DataFrame, calibration: Any) -> None:
    from ..characterize import heldout_summary

    s = page.section("accuracy", "Model accuracy: in-situ calibration, held out")
    s.append("<p class='note'>Each configuration is predicted by a cost model fitted on the "
             "other configurations' traces (leave one configuration out). Predicted and "
             "measured are the transfer time (from the last participant's arrival) per rank, "
             "µs, per decode step and per prefill; error = (predicted - measured) / measured in "
             "%. Time in calls = transfer + waiting for late ranks + host scheduling (calls "
             "that end late because their process was descheduled on oversubscribed "
             "cores).</p>")
    s.append(table_html(heldout_summary(t).round(1)))
    fig = go.Figure()
    fig.update_layout(**_LAYOUT, barmode="group", title="held-out prediction vs measured",
                      yaxis_title="µs per rank")
    key = t["label"] + " p" + t["prompt_len"].astype(str)
    for col, name in (("measured_comm_us_per_token", "decode measured"),
                      ("predicted_comm_us_per_token", "decode predicted"),
                      ("measured_comm_us_prefill", "prefill measured"),
                      ("predicted_comm_us_prefill", "prefill predicted")):
        fig.add_trace(go.Bar(x=key, y=t[col], name=name))
    page.figure(s, fig)
    fig = go.Figure()
    fig.update_layout(**_LAYOUT, barmode="stack", yaxis_title="µs per rank per decode step",
                      title="where the time in decode communication calls goes")
    for col, name in (("measured_comm_us_per_token", "transfer"), ("decode_wait_us", "wait for "
                      "late ranks"), ("decode_host_us", "host scheduling")):
        fig.add_trace(go.Bar(x=key, y=t[col].clip(lower=0), name=name))
    page.figure(s, fig)
    if calibration is not None:
        prov = getattr(calibration, "provenance", {}) or {}
        curves = getattr(calibration, "curve_provenance", {}) or {}
        rows = [{"curve": "/".join(map(str, k)), **{kk: (", ".join(map(str, vv))
                 if isinstance(vv, (list, tuple, set)) else vv) for kk, vv in v.items()
                 if kk != "paths"}}  # runs name the traces; full paths only add width
                for k, v in curves.items()]
        s.append(f"<p class='note'>Calibration used by the report: sources "
                 f"{esc(', '.join(map(str, prov.get('sources', []))))}; "
                 f"{len(getattr(calibration, 'fits', {}))} curves.</p>")
        if rows:
            s.append(table_html(pd.DataFrame(rows)))
