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
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from coordinator.errors import HyperfleetError, Interrupted, TrialCrashed

if TYPE_CHECKING:
    from coordinator.store import Lease, TrialStoreBase
    from worker.evaluate import Outcome, Resolver

# This module is what a spawned trial child imports first (to find ``_child_main``): it imports
# nothing heavy at the top, so the child asks to die with its worker within milliseconds, not
# after seconds of hyperopt/pymongo imports. The store and the evaluator are imported where used.

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerConfig:
    uri: str
    db: str
    spaces: tuple[str, ...]
    trust_pickled: bool
    #: None: $HYPERFLEET_OUTAGE_S or the default, as in the worker
    outage_s: float | None = None
    #: warm the trial process (imports, data, a first fit) before the first reservation
    warm: bool = False
    exp_key: str | None = None  #: the experiment to warm for (None: every warmable space)
    #: a trial process stopped (SIGSTOP: state T) this long is killed: its heartbeat, which the
    #: worker keeps, would hold the trial forever (the worker's lease by default)
    stopped_limit_s: float = 60.0


class Runner(Protocol):
    """Where trials execute. ``run`` raises :class:`TrialCrashed` when the trial's process dies
    and :class:`Interrupted` once ``interrupt`` is set (the trial is abandoned)."""

    def start(self, stop: threading.Event | None = None) -> None: ...
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
        from coordinator.store import connect
        from worker.evaluate import Resolver

        # no ping here: the worker already checked, and a server that is down right now is
        # retried by every store operation (outage budget) instead of killing this process
        self.store: TrialStoreBase = connect(
            config.uri, config.db, outage_s=config.outage_s, check=False
        )
        self.resolver: Resolver = Resolver(self.store, config.spaces, config.trust_pickled)
        self.config = config

    def start(self, stop: threading.Event | None = None) -> None:
        """Warm this process (``config.warm``): trials run in it (``stop`` is not watched: the
        warm-up runs in this very process)."""
        self.warm()

    def warm(self) -> float:
        """Imports, data and a first fit for the experiment's space (``config.warm``)."""
        if not self.config.warm:
            return 0.0
        from worker.warm import warm

        return warm(self.store, self.config.exp_key)

    def run(self, lease: Lease, extra: dict[str, Any], interrupt: threading.Event) -> Outcome:
        from worker.evaluate import evaluate

        started = time.perf_counter()
        outcome = evaluate(self.resolver, self.store, lease, extra)
        timing = outcome.fields.setdefault("timing", {})
        timing["wait_child_s"] = 0.0
        timing["run_s"] = round(time.perf_counter() - started, 4)
        return outcome

    def close(self) -> None:
        self.store.close()


WARM = "warm"  #: the worker's request to warm up; the child answers ``(WARM, seconds)``
PR_SET_PDEATHSIG = 1  #: linux/prctl.h
ORPHAN_CHECK_S = 0.5  #: how often a trial child checks that its worker still lives
CLOSE_GRACE_S = 1.0  #: how long an idle trial child may take to exit before it is killed


def _die_with_parent(parent_pid: int) -> None:
    """End this process when the worker that started it dies, so no trial (a whole Keras
    training) runs on for nobody.

    Two guards: Linux's parent-death signal (SIGKILL, at once), and a watchdog thread that
    exits once the parent pid changes (other systems, and a worker that died before this
    process finished its imports and could ask for the signal)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        logger.debug("prctl(PR_SET_PDEATHSIG) unavailable; relying on the watchdog thread")
    if os.getppid() != parent_pid:
        os._exit(0)  # the worker died while this process was starting

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="orphan-watchdog", daemon=True).start()


def _child_main(
    config: RunnerConfig, conn: mpc.Connection, parent_pid: int, log_level: int = logging.INFO
) -> None:
    # signals are the worker's business: it decides whether the trial finishes or is handed back
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    from coordinator import logs, quiet

    quiet.install()  # a spawned child: the CLI's banner filter is not inherited
    logs.configure(log_level, logs.CHILD_LOG_FORMAT)  # nor its log handler (timestamps)
    runner = InProcessRunner(config)
    while True:
        try:
            message = conn.recv()
            if message == WARM:
                conn.send((WARM, runner.warm()))
                continue
            lease, extra = message
            conn.send(runner.run(lease, extra, threading.Event()))
        except (EOFError, BrokenPipeError, ConnectionResetError):
            break  # the worker closed the pipe or is gone: nobody wants a result
    # exit now: a clean MongoDB client close can wait seconds for a server that is down, and
    # this process holds nothing that exiting does not release
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class ChildRunner:
    """Runs trials in a warm child process, restarted after a crash."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: mpc.Connection | None = None
        self._stopped_since: float | None = None

    def start(self, stop: threading.Event | None = None) -> None:
        """Start the child now; with ``config.warm`` wait until it has warmed up (imports, data,
        a first fit), so the first trial reserved finds it warm. Once ``stop`` is set (the
        worker got a signal) the warm-up is abandoned: the child is killed."""
        if not self.config.warm:
            self._ensure_child()
            return
        try:
            self._send(WARM)
        except TrialCrashed as e:
            logger.warning("%s while warming up; the first trial starts a fresh one", e)
            return
        while True:
            ready = mpc.wait([self._conn, self._proc.sentinel], timeout=0.2)
            if stop is not None and stop.is_set():
                logger.info("warm-up abandoned: the worker is stopping")
                self._kill()
                return
            if self._conn in ready:
                try:
                    _, seconds = self._conn.recv()
                    logger.info("trial process warmed up in %.1f s", seconds)
                    return
                except (EOFError, OSError):  # OSError: ConnectionResetError from a killed child
                    self._proc.join(5)  # the pipe is broken: the child is gone or going
            if not self._proc.is_alive():
                self._proc.join(5)
                logger.warning(
                    "trial process %s while warming up; the first trial starts a fresh one",
                    describe_exit(self._proc.exitcode),
                )
                self._discard()
                return

    def _ensure_child(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_child_main,
            args=(self.config, child, os.getpid(), logging.getLogger().getEffectiveLevel()),
            name="hyperfleet-trial",
            daemon=True,
        )
        try:
            self._proc.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._conn = parent

    def _send(self, message: Any) -> None:
        """Send ``message`` to a live child. A child that died since it was last seen (killed
        between trials, or while it started) breaks the pipe: it is replaced by a fresh one,
        once; a second failure is a crash of the trial. A child that cannot be started at
        all (no memory, no file descriptors) is :class:`HyperfleetError`: the worker exits."""
        for attempt in (1, 2):
            try:
                self._ensure_child()
                assert self._conn is not None
                self._conn.send(message)
                return
            except (BrokenPipeError, ConnectionResetError, EOFError) as e:
                proc = self._proc
                self._kill()
                code = proc.exitcode if proc is not None else None
                if attempt == 2:
                    raise TrialCrashed(
                        f"trial process could not be reached ({type(e).__name__}, "
                        f"{describe_exit(code)})"
                    ) from e
                logger.warning(
                    "trial process %s before it got its work; starting a fresh one",
                    describe_exit(code) if code is not None else "was gone",
                )
            except OSError as e:
                self._kill()
                raise HyperfleetError(
                    f"cannot start a trial process ({type(e).__name__}: {e}); this worker "
                    "exits, and its trial goes back to the queue when its lease runs out"
                ) from e

    def run(self, lease: Lease, extra: dict[str, Any], interrupt: threading.Event) -> Outcome:
        started = time.perf_counter()
        self._stopped_since = None
        self._send((lease, extra))
        while True:
            ready = mpc.wait([self._conn, self._proc.sentinel], timeout=0.2)
            if self._conn in ready:
                try:
                    outcome: Outcome = self._conn.recv()
                    run_s = time.perf_counter() - started
                    # the trial's time outside evaluate(): pipe, pickling, a (re)started child
                    timing = outcome.fields.setdefault("timing", {})
                    timing["wait_child_s"] = round(max(run_s - outcome.duration_s, 0.0), 4)
                    timing["run_s"] = round(run_s, 4)
                    return outcome
                except (EOFError, OSError):  # ConnectionResetError: killed before it answered
                    self._proc.join(5)  # the pipe is broken: the child is gone or going
            if self._proc.sentinel in ready or not self._proc.is_alive():
                self._proc.join(5)
                code = self._proc.exitcode
                self._kill()
                raise TrialCrashed(f"trial process {describe_exit(code)}")
            if interrupt.is_set():
                self._kill()
                raise Interrupted()
            stopped = self._stopped_for()
            if stopped >= self.config.stopped_limit_s:
                self._kill()
                raise TrialCrashed(f"trial process stopped (SIGSTOP) for {stopped:.0f} s; killed")

    def _stopped_for(self) -> float:
        """How long the child has been seen stopped (state ``T`` in ``/proc``); 0 while it runs
        and where ``/proc`` is missing."""
        try:
            with open(f"/proc/{self._proc.pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = b"?"
        if state != b"T":  # not "t": a debugger's tracing stop is the user's business
            self._stopped_since = None
            return 0.0
        now = time.monotonic()
        if self._stopped_since is None:
            self._stopped_since = now
        return now - self._stopped_since

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

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Let the idle child exit (it sees EOF); SIGKILL it after ``grace_s``: closing its
        MongoDB client can wait seconds for a server that is down, and it holds nothing."""
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._proc.join(grace_s)
            if self._proc.is_alive():
                self._kill()
        self._discard()
