"""Promotions (``--prune asha|hyperband --promote``): a step of the coordinator's loop.

A trial below a rung's cut is *paused* by its worker: DONE with ``result.pruned.paused``, its
checkpoint of the rung's epoch kept (a trial that could not save one is stopped for good). At
every tick :class:`Promoter` looks at the experiment's paused trials; one that now ranks among
the best ``1/η`` of its rung (more trials reached the rung since, enough of them worse) is
promoted: NEW again, reserved before fresh trials (it has a checkpoint) and resumed after the
rung's epoch, its learning curve continuing. This is ASHA's promotion rule (Li et al., MLSys
2020); a trial already in the best ``1/η`` when it reaches the rung is promoted at once (it
never pauses), and Hyperband runs the same rule in each of its brackets. At a rung of fewer
than ``η`` values the best goes on (the first trials train through soonest); with
``--promote-wait``, as in the paper, nobody does until ``η`` have reached it, and once the
search has nothing more to queue and nothing runs (``final``) such a rung can get no more
values, so its best is promoted: a search of few trials still trains its best one to the end.

Everything lives in the database (rung records, trial documents, checkpoints): a coordinator
or worker that dies loses no paused trial, and the next coordinator goes on promoting. A
promotion is two fenced writes (the rung record to ``promoted``, then the trial DONE -> NEW
only while it is still paused), so two coordinators cannot promote one trial twice. What is
still paused when the search ends stays a pruned trial (it ranks after every full one).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from coordinator import rules
from coordinator.pruning.asha import promotable
from coordinator.pruning.base import PruningConfig, rung_key

logger = logging.getLogger(__name__)


class Promoter:
    """The promotion step of one experiment whose rule promotes (``config.promote``)."""

    def __init__(self, store: Any, config: PruningConfig, exp_key: str) -> None:
        self.store = store
        self.config = config
        self.exp_key = exp_key
        self._warned: set[Any] = set()  #: paused trials whose record is unusable, said once

    def step(self, docs: Iterable[dict[str, Any]], *, final: bool = False) -> list[int]:
        """Promote the paused trials among ``docs`` that rank in their rung's best ``1/η``
        now; the tids promoted. ``final``: no trial will reach a rung any more, so with
        ``--promote-wait`` too a rung of fewer than ``η`` values promotes its best."""
        groups: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
        for doc in docs:
            pruned = rules.paused(doc)
            if pruned is None:
                continue
            rung, bracket = pruned.get("rung"), pruned.get("bracket", 0)
            if _rung_number(rung) and _rung_number(bracket) and rules.is_int(doc.get("tid")):
                groups[(bracket, rung)].append(doc)
            elif doc.get("_id") not in self._warned:
                self._warned.add(doc.get("_id"))
                logger.warning(
                    "search %r: tid %s is paused with an unusable rung record (rung %.40r, "
                    "bracket %.40r); it is never promoted",
                    self.exp_key,
                    doc.get("tid"),
                    rung,
                    bracket,
                )
        promoted = []
        for (bracket, rung), paused in sorted(groups.items()):
            values = self.store.rung_values(self.exp_key, bracket, rung)
            competing = list(values.values())
            for doc in paused:
                value = values.get(doc["tid"])
                if self._promote(doc, bracket, rung, value, competing, final=final):
                    promoted.append(doc["tid"])
        return promoted

    def _promote(
        self,
        doc: dict[str, Any],
        bracket: int,
        rung: int,
        value: float | None,
        competing: list[float],
        *,
        final: bool,
    ) -> bool:
        config = self.config
        if value is None:  # no value at its rung (NaN, or a record another writer removed)
            return False
        strict = config.promote_wait and not final
        keep, cut = promotable(
            value, competing, config.reduction_factor, config.direction, strict=strict
        )
        if not keep or cut is None:
            return False
        epoch = doc["result"]["pruned"].get("epoch")
        where = f"rung {rung}" + (f" of bracket {bracket}" if config.rule == "hyperband" else "")
        if len(competing) < config.reduction_factor:  # the best of fewer than η goes on
            ends = " as the search ends" if config.promote_wait else ""
            reason = (
                f"promoted at {where} (epoch {epoch}){ends}: {config.metric} {value:.4g} is "
                f"the best of the {len(competing)} values there (fewer than "
                f"η = {config.reduction_factor})"
            )
        else:
            reason = (
                f"promoted at {where} (epoch {epoch}): {config.metric} {value:.4g} is within "
                f"the best 1/{config.reduction_factor} of {len(competing)} (cut {cut:.4g})"
            )
        key = rung_key(self.exp_key, bracket, rung, doc["tid"])
        if not self.store.promote_paused(doc["_id"], key, reason):
            return False
        logger.info("search %r: tid %s %s", self.exp_key, doc["tid"], reason)
        return True


def make_promoter(store: Any, exp_key: str | None) -> Promoter | None:
    """The promotion step of ``exp_key``, or ``None`` where its rule does not promote."""
    if exp_key is None:
        return None
    experiment = store.get_experiment(exp_key) or {}
    config = PruningConfig.from_doc(experiment.get("pruning"))
    if config is None or not config.promote:
        return None
    return Promoter(store, config, exp_key)


def _rung_number(value: Any) -> bool:
    """A number a rung or bracket can be (an integer, not beyond any real rung)."""
    return rules.is_int(value) and 0 <= value < 64
