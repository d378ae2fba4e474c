"""commscope.dashboards: self-contained offline HTML reports (plotly). Rendering only.

    dashboards.write_report(source, out_html, *, calibration=None, model=None, workload=None,
                            config=None, nccl_logs=None, title=None)
    dashboards.export_perfetto(trace, out_json)   # Chrome trace-event JSON (Perfetto)
"""

from ._perfetto import export_perfetto
from ._report import write_report

__all__ = ["write_report", "export_perfetto"]
