"""The loss-chart keys shared by Run detail and Compare: step/tokens axis, smoothing, log y, zoom."""

from __future__ import annotations

from typing import Any

from textual.binding import Binding

from app.data.series import SMOOTHING_LEVELS

ZOOM_LEVELS = (1.0, 0.5, 0.2)  # the part of the x range shown: all of it, the last half, the last fifth

CHART_BINDINGS = [
    Binding("x", "toggle_axis", "Step/tokens"),
    Binding("s", "smoothing", "Smooth"),
    Binding("y", "log_y", "Log y"),
    Binding("z", "zoom", "Zoom"),
    Binding("m", "maximize_tabs", "Full screen", show=False),
]


class ChartControls:
    """Mixin for a screen with `axis`, `smoothing_i` and `_draw_chart()`; splice CHART_BINDINGS into
    its BINDINGS where the keys should show in the footer. `chart_options()` is what LossChart.show
    takes besides the curves."""

    axis: str
    smoothing_i: int
    log_y = False
    zoom_i = 0

    def _draw_chart(self) -> None:
        raise NotImplementedError

    def chart_options(self) -> dict[str, Any]:
        return {"smoothing": SMOOTHING_LEVELS[self.smoothing_i], "log_y": self.log_y, "zoom": ZOOM_LEVELS[self.zoom_i]}

    def action_toggle_axis(self) -> None:
        self.axis = "tokens" if self.axis == "step" else "step"
        self._draw_chart()

    def action_smoothing(self) -> None:
        self.smoothing_i = (self.smoothing_i + 1) % len(SMOOTHING_LEVELS)
        self._draw_chart()

    def action_log_y(self) -> None:
        self.log_y = not self.log_y
        self._draw_chart()

    def action_maximize_tabs(self) -> None:
        """m: the screen's tabs (Run detail's chart and log, Compare's results) over the whole screen,
        and back (esc too): at 80x24 the bottom pane had 10 lines."""
        from textual.widgets import TabbedContent

        screen: Any = self
        tabs = next(iter(screen.query(TabbedContent)), None)
        screen.maximized = None if screen.maximized is not None or tabs is None else tabs

    def action_zoom(self) -> None:
        self.zoom_i = (self.zoom_i + 1) % len(ZOOM_LEVELS)
        self._draw_chart()
