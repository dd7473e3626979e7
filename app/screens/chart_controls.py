"""The loss-chart keys shared by Run detail and Compare: step/tokens axis and smoothing level."""

from __future__ import annotations

from textual.binding import Binding

from app.data.series import SMOOTHING_LEVELS

CHART_BINDINGS = [
    Binding("x", "toggle_axis", "Step/tokens"),
    Binding("s", "smoothing", "Smooth"),
]


class ChartControls:
    """Mixin for a screen with `axis`, `smoothing_i` and `_draw_chart()`; splice CHART_BINDINGS into
    its BINDINGS where the keys should show in the footer."""

    axis: str
    smoothing_i: int

    def _draw_chart(self) -> None:
        raise NotImplementedError

    def action_toggle_axis(self) -> None:
        self.axis = "tokens" if self.axis == "step" else "step"
        self._draw_chart()

    def action_smoothing(self) -> None:
        self.smoothing_i = (self.smoothing_i + 1) % len(SMOOTHING_LEVELS)
        self._draw_chart()
