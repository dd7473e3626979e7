"""Showing a thread worker's result on a screen that may be closing.

A worker hands its result over with ``call_from_thread``; by the time it runs the user may have
left the screen or quit the app, and Textual removes a closing screen's widgets one by one. A
result that arrives then has nowhere to go and is dropped, never raised (a raise would end the app).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import ParamSpec

from textual.css.query import NoMatches
from textual.widget import Widget

P = ParamSpec("P")


def while_shown(show: Callable[P, None]) -> Callable[P, None]:
    """Run ``show`` only while its screen is attached; a widget already gone drops the result."""

    @wraps(show)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        owner = args[0]
        assert isinstance(owner, Widget)
        if not owner.is_attached:
            return
        try:
            show(*args, **kwargs)
        except NoMatches as gone:
            owner.log.warning(f"{show.__qualname__}: result dropped, {gone}")
    return guarded
