"""Where trials execute: a supervised, long-lived child process (default) or the worker itself.

The child is started once and reused, so imports, data and compiled functions stay warm; if a
trial kills it (segfault, OOM kill, ``os._exit``) the worker sees the exit code or signal,
records the crash on the trial and starts a fresh child for the next one.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from coordinator.errors import Interrupted, TrialCrashed
from coordinator.store import Lease, connect
from worker.evaluate import Outcome, Resolver, evaluate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerConfig:
    uri: str
    db: str
    spaces: tuple[str, ...]
    trust_pickled: bool
    outage_s: float


class Runner(Protocol):
    """Where trials execute. ``run`` raises :class:`TrialCrashed` when the trial's process dies
    and :class:`Interrupted` once ``interrupt`` is set (the trial is abandoned)."""

    def start(self) -> None: ...
    def run(self, lease: Lease, extra: dict[str, Any], interrupt: threading.Event) -> Outcome: ...
    def close(self) -> None: ...


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -code == 9 else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


class InProcessRunner:
    """Runs trials in the worker process: no crash isolation (``--no-isolate``)."""

    def __init__(self, config: RunnerConfig) -> None:
        # no ping here: the worker already checked, and a server that is down right now is
        # retried by every store operation (outage budget) instead of killing this process
        self.store = connect(config.uri, config.db, outage_s=config.outage_s, check=False)
        self.resolver = Resolver(self.store, config.spaces, config.trust_pickled)

    def start(self) -> None:
        """Nothing to warm up: trials run in this process."""

    def run(self, lease: Lease, extra: dict[str, Any], interrupt: threading.Event) -> Outcome:
        return evaluate(self.resolver, self.store, lease, extra)

    def close(self) -> None:
        self.store.close()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphaned trainers)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        logger.debug("prctl(PR_SET_PDEATHSIG) unavailable; relying on pipe EOF")


def _child_main(config: RunnerConfig, conn: mpc.Connection) -> None:
    # signals are the worker's business: it decides whether the trial finishes or is handed back
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    runner = InProcessRunner(config)
    try:
        while True:
            try:
                lease, extra = conn.recv()
            except EOFError:
                return
            conn.send(runner.run(lease, extra, threading.Event()))
    finally:
        runner.close()


class ChildRunner:
    """Runs trials in a warm child process, restarted after a crash."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: mpc.Connection | None = None

    def start(self) -> None:
        """Start the child now, so its imports overlap the worker's wait for the first trial."""
        self._ensure_child()

    def _ensure_child(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_child_main, args=(self.config, child), name="hyperfleet-trial", daemon=True
        )
        self._proc.start()
        child.close()
        self._conn = parent

    def run(self, lease: Lease, extra: dict[str, Any], interrupt: threading.Event) -> Outcome:
        self._ensure_child()
        assert self._conn is not None
        self._conn.send((lease, extra))
        while True:
            ready = mpc.wait([self._conn, self._proc.sentinel], timeout=0.2)
            if self._conn in ready:
                try:
                    return self._conn.recv()
                except EOFError:
                    pass  # died while answering: treated as a crash below
            if self._proc.sentinel in ready or not self._proc.is_alive():
                self._proc.join(5)
                code = self._proc.exitcode
                self._discard()
                raise TrialCrashed(f"trial process {describe_exit(code)}")
            if interrupt.is_set():
                self._kill()
                raise Interrupted()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.join(5)
        self._discard()

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._proc = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the child sees EOF and exits
        if self._proc is not None:
            self._proc.join(5)
            if self._proc.is_alive():
                self._kill()
        self._discard()
