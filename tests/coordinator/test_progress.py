"""The progress line of a search says what its finished trials are."""

from __future__ import annotations

import logging

import pytest

from coordinator.progress import SearchProgress
from coordinator.states import TrialState


def test_progress_line_says_cancelled_and_failed_apart(caplog: pytest.LogCaptureFixture) -> None:
    progress = SearchProgress("exp", 10, bar=False, every=1)
    counts = {TrialState.DONE: 3, TrialState.ERROR: 1, TrialState.CANCEL: 4, TrialState.NEW: 2}
    with caplog.at_level(logging.INFO, logger="hyperfleet"):
        progress.update(counts, best=0.25, pruned=1)
    [line] = [r.getMessage() for r in caplog.records]
    assert line == (
        "exp: 8/10 done, running 0, queued 2, best loss 0.25, pruned 1, failed 1, cancelled 4"
    )
