"""How the dashboard shows each trial state: one entry per state, nothing else knows the list.

Keys are the names :func:`coordinator.inspect.state_name` gives (``TrialState`` names in lower
case). A new state (e.g. one for trials stopped early) is one more entry here; a state the
database holds that is missing here still shows, in :data:`UNKNOWN_COLOR`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StateStyle:
    label: str  #: what pages call the state
    color: str  #: chips, chart points and curves
    live: bool = False  #: still changing (its curve is drawn while it grows)


STATE_STYLES: dict[str, StateStyle] = {
    "new": StateStyle("queued", "#8a96a3"),
    "running": StateStyle("running", "#1f77b4", live=True),
    "done": StateStyle("done", "#2ca02c"),
    "error": StateStyle("error", "#d62728"),
    "cancel": StateStyle("cancelled", "#9467bd"),
}
UNKNOWN_COLOR = "#bcbd22"


def style(state: str) -> StateStyle:
    """The style of ``state`` (a state name); unknown states keep their name as the label."""
    return STATE_STYLES.get(state) or StateStyle(state, UNKNOWN_COLOR)


def as_json() -> dict[str, dict[str, object]]:
    """The table for the pages' scripts: ``{name: {label, color, live}}``."""
    return {
        name: {"label": s.label, "color": s.color, "live": s.live}
        for name, s in STATE_STYLES.items()
    }
