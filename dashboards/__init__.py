"""commscope.dashboards: self-contained offline HTML reports (plotly). Rendering only.

    dashboards.write_report(source, out_html, *, calibration=None, model=None, workload=None,
                            config=None, nccl_logs=None, title=None)
"""

from ._report import write_report

__all__ = ["write_report"]
