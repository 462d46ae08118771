"""Live progress of a search: a tqdm bar on a terminal, summary lines elsewhere.

The coordinator calls :meth:`SearchProgress.update` from its housekeeping tick (about every
0.5 s) with the trial counts by state. With ``bar=True`` a tqdm bar on stderr shows finished
trials out of ``max_evals`` plus running, queued and the best loss so far. Without it (``--no-
progress``, or stderr not a terminal) one INFO log line is written each time another ``every``
trials have finished, and once at the end; ``--log-level warning`` silences those too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from coordinator.states import TrialState

logger = logging.getLogger("hyperfleet.progress")


class SearchProgress:
    def __init__(
        self, exp_key: str, max_evals: int, *, bar: bool, every: int | None = None
    ) -> None:
        self.exp_key = exp_key
        self.max_evals = max_evals
        self.every = every or max(1, max_evals // 10)
        self._bar: Any = None
        self._next_line = self.every
        self._logged = ""
        self._line = ""
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=max_evals,
                desc=exp_key,
                unit="trial",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )

    def update(self, counts: Mapping[TrialState, int], best: float | None, pruned: int = 0) -> None:
        """``pruned``: how many of the DONE trials an early-stopping rule stopped."""
        finished = sum(n for s, n in counts.items() if s.finished)
        running = counts.get(TrialState.RUNNING, 0)
        queued = counts.get(TrialState.NEW, 0)
        best_text = "-" if best is None else f"{best:.4g}"
        failed = counts.get(TrialState.ERROR, 0)
        cancelled = counts.get(TrialState.CANCEL, 0)  # finished, never run: said apart
        fields = (
            f"running {running}, queued {queued}, best loss {best_text}"
            + (f", pruned {pruned}" if pruned else "")
            + (f", failed {failed}" if failed else "")
            + (f", cancelled {cancelled}" if cancelled else "")
        )
        self._line = f"{self.exp_key}: {finished}/{self.max_evals} done, {fields}"
        if self._bar is not None:
            self._bar.n = min(finished, self.max_evals)
            self._bar.set_postfix_str(fields, refresh=False)
            self._bar.refresh()
        elif finished >= self._next_line:
            logger.info("%s", self._line)
            self._logged = self._line
            self._next_line = (finished // self.every + 1) * self.every

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._line and self._line != self._logged:
            logger.info("%s", self._line)
            self._logged = self._line
