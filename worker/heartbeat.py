"""A lease heartbeat: a thread that renews one trial's lease until told to stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from coordinator.errors import StoreUnavailable
from coordinator.store import Lease, TrialStoreBase

logger = logging.getLogger(__name__)


class Heartbeat:
    """Renew ``lease`` every ``interval_s`` (server clock) while the ``with`` block runs.

    ``lost`` is set when a renewal finds the trial no longer ours (reaped, cancelled); the
    thread then stops. ``on_beat`` runs after each renewal (the worker refreshes its registry
    row); ``on_slow`` runs once when the block has run ``slow_after_s`` (the worker hands back
    the trials it holds behind this one). Their errors are logged, never fatal. Stopping is
    immediate: the thread sleeps on an Event. The first renewal comes ``interval_s`` after the
    start: a trial shorter than that costs no heartbeat write.
    """

    def __init__(
        self,
        store: TrialStoreBase,
        lease: Lease,
        *,
        interval_s: float,
        lease_s: float,
        on_beat: Callable[[], None] | None = None,
        on_slow: Callable[[], None] | None = None,
        slow_after_s: float = 1.0,
    ) -> None:
        self.store = store
        self.lease = lease
        self.interval_s = interval_s
        self.lease_s = lease_s
        self.on_beat = on_beat
        self.on_slow = on_slow
        self.slow_after_s = slow_after_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-tid-{lease.tid}", daemon=True
        )

    def _run(self) -> None:
        started = time.monotonic()
        next_beat = started + self.interval_s
        slow_at = None if self.on_slow is None else started + self.slow_after_s
        while True:
            due = next_beat if slow_at is None else min(next_beat, slow_at)
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            if slow_at is not None and time.monotonic() >= slow_at:
                slow_at = None
                self._slow()
                continue
            next_beat = time.monotonic() + self.interval_s
            if not self._beat():
                return

    def _beat(self) -> bool:
        """Renew the lease once; ``False`` when the thread should stop."""
        try:
            renewed = self.store.heartbeat(self.lease, self.lease_s)
            if self._stop.is_set():
                return False  # the trial ended while this renewal waited out an outage: its
                # result is recorded (or handed back) already; nothing more to say or do
            if not renewed:
                logger.warning(
                    "tid %s: lease lost (reaped or cancelled); its result will be dropped",
                    self.lease.tid,
                )
                self.lost.set()
                return False
            if self.on_beat is not None:
                self.on_beat()
        except StoreUnavailable as e:
            if not self._stop.is_set():  # else the trial is over: nothing to renew
                logger.error("tid %s: heartbeat failed: %s", self.lease.tid, e)
            return True
        except Exception as e:  # noqa: BLE001 - a heartbeat must never kill the worker
            if self._stop.is_set():
                return False
            # one line (the stack at DEBUG): the worker goes on, its lease is renewed again
            # at the next beat, and a log line starting "Traceback" reads like a crash
            logger.error(
                "tid %s: heartbeat failed (%s: %s); retrying at the next beat",
                self.lease.tid,
                type(e).__name__,
                e,
            )
            logger.debug("heartbeat failure", exc_info=True)
        return True

    def _slow(self) -> None:
        try:
            self.on_slow()  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001 - must never kill the heartbeat
            logger.error(
                "tid %s: handing back held trials failed (%s: %s)",
                self.lease.tid,
                type(e).__name__,
                e,
            )
            logger.debug("on_slow failure", exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
