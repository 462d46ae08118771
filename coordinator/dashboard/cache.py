"""Each experiment's trials in the dashboard's memory, kept current by an incremental cursor.

The first look at an experiment reads its trials once (:meth:`TrialStoreBase.view_trials`);
every later refresh asks the database only for the trials whose ``mtime`` (server clock) is at
or after the last refresh's start minus :data:`OVERLAP_S` (a write stamped just before that
start may become visible just after it), and drops repeats by ``_id`` and ``mtime``. Refreshes
are at most one per :data:`MIN_INTERVAL_S` per experiment however many pages poll, so open
pages cost the database one small indexed query per second.

Browsers poll the cache, not the database: every entry that really changed gets the next
sequence number, and a page asks for the entries after the last number it saw (exact, no
overlap). A cache's ``token`` changes when the dashboard restarts, so a page then reloads all.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator import inspect, rules
from coordinator.dashboard import states

if TYPE_CHECKING:
    from coordinator.store import TrialStoreBase

#: seconds re-read before the last refresh's start (writes stamped just before it)
OVERLAP_S = 2.0
#: seconds between two database refreshes of one experiment, however many pages poll
MIN_INTERVAL_S = 1.0
#: at most this many points of one learning curve go to a page (evenly spaced, last kept)
MAX_CURVE_POINTS = 200
#: learning curves shown: every running trial, the best (:func:`coordinator.rules.ranked`) and the
#: most recently finished
CURVES_BEST = 10
CURVES_RECENT = 10
#: and the most recently pruned ones (where the early-stopping rule stopped them)
CURVES_PRUNED = 10


def timestamp(value: Any) -> float | None:
    """A stored date (naive UTC) as Unix seconds, for the charts; ``None`` for anything else."""
    if not isinstance(value, dt.datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def decimate(n: int, limit: int = MAX_CURVE_POINTS) -> list[int]:
    """Indices of at most ``limit`` evenly spaced points of ``n``, first and last included."""
    if n <= limit:
        return list(range(n))
    step = (n - 1) / (limit - 1)
    return sorted({round(i * step) for i in range(limit)})


def curve(epochs: Any) -> dict[str, list[float | None]] | None:
    """Per-epoch metrics as columns ``{"epoch": [...], "loss": [...], ...}`` (numbers only,
    decimated to :data:`MAX_CURVE_POINTS`); ``None`` for a trial without epochs."""
    if not isinstance(epochs, list) or not epochs:
        return None
    rows = [e for e in epochs if isinstance(e, Mapping)]
    keep = decimate(len(rows))
    names: dict[str, None] = {}
    for row in rows:
        names.update((k, None) for k, v in row.items() if _number(v) is not None)
    names.pop("epoch", None)
    columns: dict[str, list[float | None]] = {
        "epoch": [_number(rows[i].get("epoch")) or float(i + 1) for i in keep]
    }
    for name in names:
        columns[str(name)] = [_number(rows[i].get(name)) for i in keep]
    return columns


@dataclass
class TrialEntry:
    """One trial as the dashboard shows it (built once per change of the document)."""

    id: Any
    tid: Any
    state: str
    mtime: Any
    seq: int
    #: what :mod:`coordinator.rules` and ``inspect.summarize`` read, with ``problem`` (why the
    #: document cannot be used, :func:`coordinator.rules.trial_problem`; ``None`` if it can)
    outcome: dict[str, Any]
    row: dict[str, Any]  #: ``inspect.trial_row``, JSON-ready
    ok_loss: float | None  #: :func:`coordinator.rules.ok_loss`; ``None`` for a malformed one
    #: it can be the best (:func:`coordinator.rules.best_so_far` counts it): ok, full, usable
    counted: bool
    curve: dict[str, list[float | None]] | None
    worker_id: str | None
    worker_label: str | None
    book_time: dt.datetime | None
    ended: dt.datetime | None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], seq: int) -> TrialEntry:
        # what ``inspect.summarize`` and the rules read: the lean document without its epochs,
        # with the ``problem`` the store's lean reads record (so both skip a malformed one)
        outcome = {k: v for k, v in doc.items() if k != "epochs"}
        outcome["problem"] = rules.trial_problem(doc)
        state = states.display_state(outcome)
        key = rules.rank_key(outcome)
        row = {k: inspect.jsonable(v) for k, v in inspect.trial_row(doc).items()}
        row["state"] = state
        worker = doc.get("worker") if isinstance(doc.get("worker"), Mapping) else {}
        gpu = worker.get("host_gpu") or worker.get("gpu")
        label = None
        if worker.get("host"):
            label = (
                f"{worker['host']} GPU {gpu}"
                if gpu not in (None, "", "none")
                else (f"{worker['host']} CPU")
            )
        return cls(
            id=doc.get("_id"),
            tid=doc.get("tid"),
            state=state,
            mtime=doc.get("mtime"),
            seq=seq,
            outcome=outcome,
            row=row,
            ok_loss=None if key is None else key[1],
            counted=key is not None and not key[0],
            curve=curve(doc.get("epochs")),
            worker_id=inspect.typed(worker.get("id"), str),
            worker_label=label,
            book_time=inspect.when(doc.get("book_time")),
            ended=inspect.when(doc.get("ended")),
        )

    def to_json(self, *, with_curve: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tid": self.tid,
            "state": self.state,
            "ok": self.ok_loss,
            "counted": self.counted,
            "loss": self.row.get("loss"),
            "t0": timestamp(self.book_time),
            "t1": timestamp(self.ended),
            "row": self.row,
        }
        if with_curve and self.curve is not None:
            out["curve"] = self.curve
        return out


class TrialCache:
    """One experiment's trials, refreshed incrementally (see the module docstring)."""

    def __init__(
        self,
        store: TrialStoreBase,
        exp_key: str,
        *,
        overlap_s: float = OVERLAP_S,
        min_interval_s: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.exp_key = exp_key
        self.token = secrets.token_hex(6)
        self.overlap = dt.timedelta(seconds=overlap_s)
        self.min_interval_s = min_interval_s
        self.clock = clock
        #: server time when the last refresh started (``None``: never read)
        self.now: dt.datetime | None = None
        self.seq = 0
        self.last_changes = 0  #: documents the last refresh read
        self._entries: dict[Any, TrialEntry] = {}
        self._columns: dict[str, None] = {}
        self._refreshed = -math.inf
        self._sorted: list[TrialEntry] | None = None
        self._memo: dict[str, tuple[Any, float, Any]] = {}
        self._lock = threading.Lock()

    def refresh(self, *, force: bool = False) -> None:
        """Read what changed since the last refresh (everything the first time); a no-op when
        the last refresh is younger than ``min_interval_s`` unless ``force``."""
        with self._lock:
            if not force and self.clock() - self._refreshed < self.min_interval_s:
                return
            start = self.store.server_time()
            since = None if self.now is None else self.now - self.overlap
            docs = self.store.view_trials(self.exp_key, since)
            self._merge(docs)
            self.now = start
            self.last_changes = len(docs)
            self._refreshed = self.clock()

    def _merge(self, docs: Iterable[Mapping[str, Any]]) -> None:
        for doc in docs:
            old = self._entries.get(doc.get("_id"))
            if old is not None and old.mtime is not None and old.mtime == doc.get("mtime"):
                continue  # seen already: the overlap window reads it twice
            self.seq += 1
            self._sorted = None
            entry = TrialEntry.from_doc(doc, self.seq)
            self._entries[entry.id] = entry
            self._columns.update(dict.fromkeys(entry.row))

    def entries(self) -> list[TrialEntry]:
        """Every trial, in tid order (sorted once per change; callers must not modify it)."""
        with self._lock:
            if self._sorted is None:
                self._sorted = sorted(self._entries.values(), key=lambda e: rules.tid_order(e.tid))
            return self._sorted

    def changed_since(self, seq: int) -> list[TrialEntry]:
        """The trials that changed after sequence number ``seq``, in tid order."""
        return [e for e in self.entries() if e.seq > seq]

    def derived(self, name: str, key: Any, make: Callable[[], Any], max_age_s: float) -> Any:
        """``make()``, computed again only when the trials changed, ``key`` changed or the last
        result is older than ``max_age_s``: what every poll shows but few change (summaries)."""
        memo = self._memo.get(name)
        full_key = (self.seq, key)
        if memo is not None and memo[0] == full_key and self.clock() - memo[1] < max_age_s:
            return memo[2]
        value = make()
        self._memo[name] = (full_key, self.clock(), value)
        return value

    def remember(
        self, name: str, key: Any, make: Callable[[], Any], min_interval_s: float = 0.0
    ) -> Any:
        """``make()``, computed again only when ``key`` changed and the last result is at least
        ``min_interval_s`` old (changes of other trials alone do not count, unlike
        :meth:`derived`): what depends on a few facts of the experiment (its space, how many
        trials are full) and costs more than a poll should pay each time."""
        memo = self._memo.get(name)
        if memo is not None and (memo[0] == key or self.clock() - memo[1] < min_interval_s):
            return memo[2]
        value = make()
        self._memo[name] = (key, self.clock(), value)
        return value

    def columns(self) -> list[str]:
        """The table's columns (``inspect.columns`` order) over every trial seen."""
        with self._lock:
            names = dict.fromkeys(self._columns)
        return inspect.columns([names])

    def outcomes(self) -> list[dict[str, Any]]:
        return [e.outcome for e in self.entries()]


def _outcome(entry: TrialEntry) -> Mapping[str, Any]:
    return entry.outcome


def curve_tids(
    entries: Iterable[TrialEntry],
    best: int = CURVES_BEST,
    recent: int = CURVES_RECENT,
    pruned: int = CURVES_PRUNED,
) -> list[Any]:
    """The trials whose learning curves a page draws: every running one, the ``best`` first
    of :func:`coordinator.rules.ranked` (pruned trials only after every full one), the
    ``recent`` most recently ended and the ``pruned`` most recently pruned (so a search that
    prunes shows where its rule stops trials, even when full trials fill the rest)."""
    # a tid of another program's may be a list: no curve for it (tids are dict keys here)
    with_curves = [e for e in entries if e.curve is not None and isinstance(e.tid, (int, str))]
    running = [e.tid for e in with_curves if e.state == "running"]
    ok = rules.ranked(with_curves, _outcome)
    ended = sorted(
        (e for e in with_curves if e.ended is not None), key=lambda e: e.ended, reverse=True
    )
    chosen = dict.fromkeys(running)
    chosen.update(dict.fromkeys(e.tid for e in ok[:best]))
    chosen.update(dict.fromkeys(e.tid for e in ended[:recent]))
    chosen.update(dict.fromkeys([e.tid for e in ended if e.state == "pruned"][:pruned]))
    return list(chosen)


def best_series(entries: Iterable[TrialEntry]) -> dict[str, list[Any]]:
    """The "best loss so far" line (:func:`coordinator.rules.best_so_far`, so it starts at and
    ends on trials ``best`` would name): the points where the best improved, and the last
    counted trial's, as columns ``{"t": [Unix seconds], "best": [...], "tid": [...]}``."""
    series = rules.best_so_far(entries, _outcome)
    line: dict[str, list[Any]] = {"t": [], "best": [], "tid": []}
    for i, (entry, _loss, best) in enumerate(series):
        improved = i == 0 or best < series[i - 1][2]
        if improved or i == len(series) - 1:
            line["t"].append(timestamp(entry.ended))
            line["best"].append(best)
            line["tid"].append(entry.tid)
    return line


class Caches:
    """The dashboard's caches, one per experiment, made on first use."""

    def __init__(self, store: TrialStoreBase, **options: Any) -> None:
        self.store = store
        self.options = options
        self._caches: dict[str, TrialCache] = {}
        self._lock = threading.Lock()

    def get(self, exp_key: str, *, refresh: bool = True) -> TrialCache:
        with self._lock:
            cache = self._caches.get(exp_key)
            if cache is None:
                cache = self._caches[exp_key] = TrialCache(self.store, exp_key, **self.options)
        if refresh:
            cache.refresh()
        return cache


class CachedOutcomes:
    """The two reads ``inspect.summarize`` makes, answered from a cache, so the dashboard's
    counts, best trial, trials/min and ETA are the CLI's (same code) without a database scan."""

    def __init__(self, cache: TrialCache) -> None:
        self.cache = cache

    def trial_outcomes(self, exp_key: str | None) -> list[dict[str, Any]]:
        return self.cache.outcomes()

    def server_time(self) -> dt.datetime:
        return self.cache.now or self.cache.store.server_time()


#: seconds the list of experiments is reused (it costs a scan of the trials' exp keys)
LIST_MAX_AGE_S = 10.0


class ExperimentList:
    """Every experiment (:func:`coordinator.inspect.all_experiments`: the experiments collection
    plus one scan of the trials' exp keys for plain-fmin ones), read at most once per
    ``max_age_s`` however many pages ask; one read at a time (the others wait for its answer)."""

    def __init__(
        self,
        store: TrialStoreBase,
        *,
        max_age_s: float = LIST_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.max_age_s = max_age_s
        self.clock = clock
        self.reads = 0  #: how many times the database was asked (tests, benchmarks)
        self._value: list[dict[str, Any]] | None = None
        self._at = -math.inf
        self._lock = threading.Lock()

    def get(self) -> list[dict[str, Any]]:
        with self._lock:
            if self._value is None or self.clock() - self._at >= self.max_age_s:
                self._value = inspect.all_experiments(self.store)  # type: ignore[arg-type]
                self._at = self.clock()
                self.reads += 1
            return self._value

    def stand_in(self, exp_key: str) -> dict[str, Any] | None:
        """The listed plain-fmin stand-in of ``exp_key`` (no document of its own), if any."""
        for exp in self.get():
            if exp.get("_id") == exp_key and exp.get("status") == inspect.PLAIN_FMIN:
                return exp
        return None
