"""Database outages, on the database's clock: so that the reaper never charges one to a trial.

A lease runs out when its worker stops renewing it, and the reaper counts that as a lost
attempt. But a worker also stops renewing when nobody can reach the database: a restarted,
frozen or partitioned server. Such a lease says nothing about the trial, so it must not cost
an attempt (three long outages would otherwise turn a whole fleet's trials into ERROR).

What is observable, on the server's clock:

* **reports**: a process whose store regains contact after an outage writes one document to
  the ``outages`` collection, ``{from, to}`` (``to`` is the server's ``$$NOW`` at its first
  success, ``from`` that less how long it had been failing, measured on its own monotonic
  clock), via :attr:`MongoHandles.outage_listeners <coordinator.store.handles.MongoHandles>`;
* **a restart**: the server's ``serverStatus`` says when it started; the outage it ended ran
  from the last ``last_seen`` any worker wrote before that to the start (a reaper that did
  not live through the outage itself, e.g. a coordinator started afterwards, still sees it).

:func:`covering` is the rule: a lease that ran out within half a lease of an outage is the
outage's doing. The reaper (:mod:`coordinator.store.reaping`) then waits one more lease from
the end of the outage (its worker, which may have run on through it, renews it meanwhile and
keeps its trial), and requeues it *not counted* if nobody did.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pymongo
from bson import ObjectId

from coordinator.store.connection import retrying
from coordinator.store.encoding import usable_date
from coordinator.store.handles import MongoHandles

logger = logging.getLogger(__name__)

#: outages shorter than this are not reported (a blip cannot outlast a lease)
MIN_REPORTED_S = 1.0
#: reports older than this are deleted by the next report
KEEP_REPORTS = dt.timedelta(days=7)


@dataclass(frozen=True)
class Outage:
    """A span of server time in which the database was unreachable, and who saw it."""

    start: dt.datetime
    end: dt.datetime
    source: str

    def describe(self) -> str:
        return f"{self.start:%H:%M:%S}-{self.end:%H:%M:%S} UTC, {self.source}"


def covering(outages: Iterable[Outage], expired: dt.datetime, lease_s: float) -> Outage | None:
    """The outage a lease that ran out at ``expired`` is blamed on, if any: one that began
    before, or up to half a lease after, and ended at most half a lease before it (its worker
    renews every ``--heartbeat``, well under half a lease, once it can)."""
    half = dt.timedelta(seconds=lease_s / 2)
    for outage in outages:
        if outage.start - half <= expired <= outage.end + half:
            return outage
    return None


class OutageRecord:
    """The ``outages`` collection of one store, and the server's restart."""

    def __init__(self, mongo: MongoHandles) -> None:
        self.mongo = mongo
        self.reports = mongo.db["outages"]

    def report(self, down_s: float) -> None:
        """This process could not reach the database for the last ``down_s`` seconds (called
        by the retry loop at its first success). One try: a failure is logged, not raised."""
        if down_s < MIN_REPORTED_S:
            return
        by = f"{socket.gethostname()}:{os.getpid()}"
        try:
            self.reports.update_one(
                {"_id": ObjectId()},
                [
                    {
                        "$set": {
                            "from": {"$subtract": ["$$NOW", int(down_s * 1000)]},
                            "to": "$$NOW",
                            "down_s": round(down_s, 3),
                            "by": by,
                        }
                    }
                ],
                upsert=True,
            )
            self.reports.delete_many({"to": {"$lt": self.mongo.server_time() - KEEP_REPORTS}})
        except pymongo.errors.PyMongoError as e:
            logger.info("could not record the outage of %.1f s: %s", down_s, e)

    @retrying
    def since(self, earliest: dt.datetime) -> list[Outage]:
        """The outages that ended at or after ``earliest`` (reports and a restart)."""
        found = [
            Outage(doc["from"], doc["to"], f"reported by {doc.get('by', '?')}")
            for doc in self.reports.find({"to": {"$gte": earliest}})
            if _span(doc.get("from"), doc.get("to"))
        ]
        restart = self.restart()
        if restart is not None and restart.end >= earliest:
            found.append(restart)
        return found

    def restart(self) -> Outage | None:
        """The outage the server's last start ended: from the last sign of life of any worker
        before it to the start; ``None`` where no worker was seen before the start, or the
        server does not say when it started."""
        try:
            status = self.mongo.client.admin.command("serverStatus")
        except pymongo.errors.OperationFailure:  # not allowed to ask (MongoDB without the role)
            return None
        now, uptime_ms = status.get("localTime"), status.get("uptimeMillis")
        if not isinstance(now, dt.datetime) or not isinstance(uptime_ms, (int, float)):
            return None
        started = now.replace(tzinfo=None) - dt.timedelta(milliseconds=uptime_ms)
        before = self.mongo.workers.find_one(
            {"last_seen": {"$lt": started}}, sort=[("last_seen", -1)], projection=["last_seen"]
        )
        if before is None:  # no worker was alive before it: nobody's lease ran out meanwhile
            return None
        return Outage(before["last_seen"], started, f"server restarted at {started:%H:%M:%S} UTC")


def _span(start: Any, end: Any) -> bool:
    """Whether an outage report's ``from`` and ``to`` are dates an outage can have (another
    writer's junk, e.g. year 1, must not break the reaper's date arithmetic)."""
    return usable_date(start) and usable_date(end) and start <= end
