"""commscope.dashboards: self-contained offline HTML reports (plotly). Rendering only."""

__all__: list[str] = []
