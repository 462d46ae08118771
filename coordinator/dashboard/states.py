"""How the dashboard shows each trial state: one entry per state, nothing else knows the list.

Keys are the names :func:`display_state` gives: ``TrialState`` names in lower case,
``pruned`` for trials an early-stopping rule stopped and ``malformed`` for documents nobody can
use. A new state is one more entry here (and,
if it is not a ``TrialState``, one line in :func:`display_state`); a state the database holds
that is missing here still shows, in :data:`UNKNOWN_COLOR`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coordinator import inspect, rules
from coordinator.states import TrialState


@dataclass(frozen=True)
class StateStyle:
    label: str  #: what pages call the state
    color: str  #: chips, chart points and curves
    live: bool = False  #: still changing (its curve is drawn while it grows)


STATE_STYLES: dict[str, StateStyle] = {
    "new": StateStyle("queued", "#8a96a3"),
    "running": StateStyle("running", "#1f77b4", live=True),
    "done": StateStyle("done", "#2ca02c"),
    # DONE, stopped early by the experiment's rule (``result.pruned``: see display_state)
    "pruned": StateStyle("pruned", "#ff7f0e"),
    # a pruned trial paused at a rung (``--promote``): a count of the summary only; its points
    # and curves are drawn as pruned
    "paused": StateStyle("paused at a rung", "#f0a860"),
    "error": StateStyle("error", "#d62728"),
    "cancel": StateStyle("cancelled", "#9467bd"),
    # a document nobody can use (``problem``: see display_state): in no count, chart or rank
    "malformed": StateStyle("malformed", "#7f7f7f"),
}
UNKNOWN_COLOR = "#bcbd22"


def display_state(doc: Mapping[str, Any]) -> str:
    """The state a page shows: the trial state's name, ``pruned`` for a DONE trial an
    early-stopping rule stopped (:func:`coordinator.rules.pruned`), or ``malformed`` for a
    document whose ``problem`` is set (:func:`coordinator.rules.trial_problem`, as
    ``status`` shows it)."""
    if doc.get("problem"):
        return inspect.MALFORMED
    if doc.get("state") == TrialState.DONE and rules.pruned(doc) is not None:
        return "pruned"
    return inspect.state_name(doc.get("state"))


def style(state: str) -> StateStyle:
    """The style of ``state`` (a state name); unknown states keep their name as the label."""
    return STATE_STYLES.get(state) or StateStyle(state, UNKNOWN_COLOR)


def as_json() -> dict[str, dict[str, object]]:
    """The table for the pages' scripts: ``{name: {label, color, live}}``."""
    return {
        name: {"label": s.label, "color": s.color, "live": s.live}
        for name, s in STATE_STYLES.items()
    }
