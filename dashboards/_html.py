"""Page assembly: one self-contained HTML file, plotly.js embedded once, every string escaped."""

from __future__ import annotations

import html
import json
from typing import Any

import pandas as pd

__all__ = ["Page", "esc", "table_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2433;
background:#f5f6f8}
header{background:#1d2433;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#b8c0cf;font-size:13px}
nav{padding:8px 28px;background:#fff;border-bottom:1px solid #dde1e7;font-size:13px}
nav a{margin-right:14px;color:#2b59c3;text-decoration:none}
section{background:#fff;margin:16px 28px;padding:16px 20px;border-radius:8px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
section h2{margin:0 0 4px;font-size:17px} .note{color:#5b6474;font-size:12.5px;margin:2px 0 10px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0} th,td{padding:4px 9px;
border-bottom:1px solid #e6e9ee;text-align:right} th{background:#f0f2f5;text-align:center}
td.l,th.l{text-align:left} .plot{width:100%;min-height:380px}
.kpi{display:inline-block;margin:0 22px 8px 0} .kpi b{display:block;font-size:20px}
.kpi span{color:#5b6474;font-size:12px}
ul.findings{font-size:14.5px;line-height:1.5;margin:6px 0;padding-left:20px}
details summary{cursor:pointer;color:#2b59c3;font-size:12.5px}
"""

# Collects errors and checks that every plot rendered; tests read #commscope-selfcheck.
_SELFCHECK = """
window.__csErrors=[];window.addEventListener('error',function(e){__csErrors.push(String(e.message))});
(function(){var ce=console.error;console.error=function(){__csErrors.push(Array.prototype.join.call(arguments,' '));ce.apply(console,arguments)}})();
"""
_SELFCHECK_END = """
window.addEventListener('load',function(){setTimeout(function(){
var plots=document.querySelectorAll('div.plot'),ok=0;
plots.forEach(function(p){if(p.querySelector('.main-svg'))ok++});
var el=document.getElementById('commscope-selfcheck');
el.textContent=JSON.stringify({plots:plots.length,rendered:ok,errors:__csErrors,
scripts:document.scripts.length});},500)});
"""


def esc(value: Any) -> str:
    """HTML-escape any value (trace and log strings are untrusted)."""
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


def table_html(df: pd.DataFrame, max_rows: int = 200, collapse_rows: int = 15) -> str:
    """A DataFrame as an escaped HTML table (first `max_rows` rows); tables longer than
    `collapse_rows` rows are collapsed (a <details> element the reader opens)."""
    if df is None or df.empty:
        return "<p class='note'>(none)</p>"
    cols = list(df.columns)
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    rows = []
    for rec in df.head(max_rows).itertuples(index=False):
        cells = []
        for v in rec:
            if hasattr(v, "item"):
                v = v.item()
            cls = "" if isinstance(v, (int, float)) else " class='l'"
            cells.append(f"<td{cls}>{esc(_fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = (f"<p class='note'>{len(df) - max_rows:,} more rows not shown</p>"
            if len(df) > max_rows else "")
    table = f"<table><tr>{head}</tr>{''.join(rows)}</table>{more}"
    if len(df) > collapse_rows:
        return (f"<details><summary>table ({len(df):,} rows)</summary>{table}</details>")
    return table


def _safe_json(obj: Any) -> str:
    """JSON that cannot end a <script> element: <, >, & escaped as \\u sequences."""
    text = obj if isinstance(obj, str) else json.dumps(obj)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class Page:
    """Sections of figures, tables and notes, rendered into one HTML file."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title, self.subtitle = title, subtitle
        self.sections: list[tuple[str, str, list[str]]] = []
        self._figs: list[tuple[str, str]] = []

    def section(self, anchor: str, heading: str) -> list[str]:
        parts: list[str] = []
        self.sections.append((anchor, heading, parts))
        return parts

    def figure(self, parts: list[str], fig: Any) -> None:
        div = f"plot{len(self._figs)}"
        self._figs.append((div, _safe_json(fig.to_json())))
        parts.append(f"<div class='plot' id='{div}'></div>")

    def render(self) -> str:
        from plotly.offline import get_plotlyjs

        nav = "".join(f"<a href='#{esc(a)}'>{esc(h)}</a>" for a, h, _ in self.sections)
        body = "".join(f"<section id='{esc(a)}'><h2>{esc(h)}</h2>{''.join(p)}</section>"
                       for a, h, p in self.sections)
        plots = "".join(
            f"(function(){{var f={js};Plotly.newPlot('{d}',f.data,f.layout,"
            f"{{responsive:true,displaylogo:false}});}})();" for d, js in self._figs)
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(self.title)}"
                f"</title><style>{_CSS}</style><script>{_SELFCHECK}</script>"
                f"<script>{get_plotlyjs()}</script></head><body>"
                f"<header><h1>{esc(self.title)}</h1><p>{esc(self.subtitle)}</p></header>"
                f"<nav>{nav}</nav>{body}<div id='commscope-selfcheck' hidden></div>"
                f"<script>{plots}{_SELFCHECK_END}</script></body></html>")
