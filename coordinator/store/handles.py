"""What the store's parts share: one client, its collections, the outage state and the clock.

Each part of :class:`~coordinator.store.mongo.TrialStore` (leases, reads, experiments, ...) is
its own object built on one :class:`MongoHandles`; a part that needs another is given it when
it is built, so every dependency between parts is written down in
:meth:`TrialStore.__init__ <coordinator.store.mongo.TrialStore.__init__>`. The outage state
lives here, not in the parts: an outage is one budget for every operation of the store
(:func:`~coordinator.store.connection.retrying`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import gridfs
import pymongo
from pymongo.collection import Collection
from pymongo.database import Database

from coordinator.store.connection import retrying
from coordinator.store.encoding import utcnow

#: seconds an estimate of the server's clock offset is used before it is measured again
CLOCK_TTL_S = 60.0


class MongoHandles:
    """The client, database and collections of one store, and its outage budget."""

    def __init__(
        self, client: pymongo.MongoClient, db_name: str, *, safe_uri: str, outage_s: float
    ) -> None:
        self.client = client
        self.db_name = db_name
        self.db: Database = client[db_name]
        self.jobs: Collection = self.db["jobs"]
        self.experiments: Collection = self.db["experiments"]
        self.workers: Collection = self.db["workers"]
        self.gfs = gridfs.GridFS(self.db, collection="fs")
        self.safe_uri = safe_uri  #: the URI without its password, for messages
        self.outage_s = outage_s  #: seconds operations retry an unreachable server
        #: when the current outage began (``time.monotonic``), ``None`` while connected
        self.outage_since: float | None = None
        self._clock_offset: dt.timedelta | None = None  #: server clock - this clock
        self._clock_measured = 0.0  #: when the offset was measured (``time.monotonic``)
        #: called with the outage's length (s) by the first success after an outage, in that
        #: call's thread (:class:`~coordinator.store.outages.OutageRecord` records it)
        self.outage_listeners: list[Callable[[float], None]] = []

    @retrying
    def server_time(self) -> dt.datetime:
        """The database server's clock (naive UTC), as used for leases."""
        reply = self.client.admin.command("hello")
        now = reply.get("localTime")
        return now.replace(tzinfo=None) if now is not None else utcnow()

    def server_clock(self) -> dt.datetime:
        """The server's clock estimated without a round trip: this machine's clock plus the
        offset :meth:`server_time` showed, measured again every ``CLOCK_TTL_S``. Its error is
        about half a round trip (milliseconds), far inside the overlap readers allow
        (``REFRESH_OVERLAP_S``): good for ``mtime`` stamps, never for leases."""
        now = time.monotonic()
        if self._clock_offset is None or now - self._clock_measured > CLOCK_TTL_S:
            before = utcnow()
            server = self.server_time()
            after = utcnow()
            self._clock_offset = server - (before + (after - before) / 2)
            self._clock_measured = now
        return utcnow() + self._clock_offset


class StorePart:
    """A part of the store: the handles it works on. Parts never inherit from each other."""

    def __init__(self, mongo: MongoHandles) -> None:
        self.mongo = mongo
        self.db = mongo.db
        self.jobs = mongo.jobs
        self.experiments = mongo.experiments
        self.workers = mongo.workers
        self.gfs = mongo.gfs
