"""``hyperfleet local``: embedded server + N worker processes + the coordinator, in one command.

The server and the workers die with this process, even when it is SIGKILLed (see
:func:`coordinator.server.die_with_parent`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coordinator import defaults
from coordinator.errors import HyperfleetError, counted
from coordinator.experiment_lease import pid_gone
from coordinator.search import Coordinator, SearchConfig, SearchOutcome
from coordinator.server import EmbeddedServer, die_with_parent
from coordinator.states import AttemptOutcome, ExperimentStatus, TrialState
from coordinator.store import Lease, TrialStoreBase, connect

logger = logging.getLogger(__name__)


@dataclass
class LocalConfig:
    search: SearchConfig
    workers: int = 2
    db_path: Path = defaults.DB_PATH
    db: str = defaults.DB_NAME
    worker_args: list[str] = field(default_factory=list)
    #: one environment per worker (GPU pinning, threads); empty: plain CPU workers
    worker_envs: list[dict[str, str]] = field(default_factory=list)
    log_dir: Path | None = None
    #: called with the store and the outcome before the embedded server stops
    after: Callable[[TrialStoreBase, SearchOutcome], None] | None = None
    #: called once the experiment is accepted (a refused rerun never gets there)
    on_start: Callable[[], None] | None = None


def local_worker_envs(
    workers: int, gpus: list[str] | None, per_gpu: int, threads: int | None
) -> list[dict[str, str]]:
    """One environment per worker: ``per_gpu`` workers pinned to each GPU id of ``gpus`` (else
    ``workers`` CPU workers), each with ``threads`` CPU threads (default: the cores divided
    among the workers, so they do not oversubscribe them)."""
    pins = [g for g in gpus for _ in range(per_gpu)] if gpus else ["none"] * workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_worker = threads or max(1, (cores or 1) // len(pins))
    return [{"HYPERFLEET_GPU": pin, "HYPERFLEET_THREADS": str(per_worker)} for pin in pins]


def release_dead_workers(store: TrialStoreBase, exp_key: str) -> int:
    """Hand back at once the RUNNING trials of ``exp_key`` whose worker ran on this host and
    whose pid is gone (an earlier ``local`` run that was killed took its workers along): a lost
    attempt, as the reaper would record once their leases expired, without waiting for that.
    One line says how many; returns how many."""
    host = socket.gethostname()
    released: list[int] = []
    for doc in store.trials(exp_key, [TrialState.RUNNING], with_spec=False):
        worker = doc.get("worker") if isinstance(doc.get("worker"), dict) else {}
        pid = worker.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            continue
        if worker.get("host") != host or not isinstance(doc.get("owner"), str):
            continue
        if not pid_gone(pid):
            continue
        reason = f"worker pid {pid} on this host is gone (an earlier run was stopped)"
        if store.release(Lease.from_doc(doc), AttemptOutcome.LOST, reason) is not None:
            released.append(pid)
    if released:
        logger.warning(
            "%s of workers of an earlier run that are gone (pids %s) went back to the queue "
            "now, not after their lease",
            counted(len(released), "running trial"),
            ", ".join(str(p) for p in sorted(set(released))),
        )
    return len(released)


#: how often ``local`` replaces one worker slot's dead worker before giving that slot up
WORKER_RESTARTS = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM (a supervisor, ``docker stop``): stop now, handing running trials back, unlike
    a first Ctrl-C, which lets them finish."""


class LocalRun:
    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.server = EmbeddedServer(config.db_path)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._envs: list[dict[str, str]] = []
        self._restarts: list[int] = []  #: per worker slot, how often it was replaced
        self._store: TrialStoreBase | None = None
        self.log_dir = config.log_dir or Path(config.db_path).resolve().parent / "logs"

    def run(self) -> SearchOutcome:
        self.server.start()
        try:
            store = connect(self.server.uri, self.config.db)
            coordinator = Coordinator(store, self.config.search)
            coordinator.prepare()  # a rerun with other settings is refused before any worker
            if self.config.on_start is not None:
                self.config.on_start()
            self._store = store
            release_dead_workers(store, self.config.search.exp_key)
            self._start_workers()
            coordinator.on_tick = lambda trials, counts: self._check_workers()
            outcome = coordinator.run()
            if self.config.after is not None:
                self.config.after(store, outcome)
            return outcome
        except KeyboardInterrupt as stop:
            if not isinstance(stop, Terminated):  # Ctrl-C: let the running trials finish
                self._finish_running_trials()
            raise
        finally:
            try:
                self._stop_workers()
            finally:
                self.server.stop()  # even when another Ctrl-C cut the workers' stop short

    def _start_workers(self) -> None:
        from coordinator.cli.options import check_exp_key

        check_exp_key(self.config.search.exp_key, "exp key")  # it names the log files
        self.log_dir.mkdir(parents=True, exist_ok=True)
        envs = self.config.worker_envs or [{} for _ in range(self.config.workers)]
        self._envs = envs
        self._restarts = [0] * len(envs)
        for i in range(len(envs)):  # one at a time: a failure halfway leaves the started ones
            self.procs.append(self._spawn(i))  # in self.procs, to be stopped
        logger.info("started %s; their logs: %s", counted(len(self.procs), "worker"), self.log_dir)

    def _log_path(self, i: int) -> Path:
        return self.log_dir / f"{self.config.search.exp_key}-worker-{i}.log"

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "HYPERFLEET_MONGO": self.server.uri, **self._envs[i]}
        cmd = [
            sys.executable,
            "-m",
            "coordinator",
            "worker",
            "--db",
            self.config.db,
            "--exp-key",
            self.config.search.exp_key,
            *self.config.worker_args,
        ]
        with open(self._log_path(i), "ab") as log:
            # SIGKILLed with us: a search nobody drives needs no workers; their trials are
            # requeued by the next run's reaper. Their own session: a Ctrl-C in the terminal
            # reaches this process only, which decides what the workers do (see run()).
            return subprocess.Popen(
                die_with_parent(cmd, signal.SIGKILL),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _check_workers(self) -> None:
        """A worker that died during the search (killed, crashed) is replaced, up to
        ``WORKER_RESTARTS`` times per slot; its trial goes back to the queue when its lease
        runs out. When every slot has given up, the search stops with one error."""
        from worker.supervisor import describe_exit

        running: bool | None = None  # whether the experiment still runs (read when needed)
        for i, proc in enumerate(self.procs):
            code = proc.poll()
            if code is None or self._restarts[i] > WORKER_RESTARTS:
                continue  # running, or given up
            if code == 0:  # left by itself: the search is over, or someone stopped it
                if running is None:
                    assert self._store is not None
                    exp = self._store.get_experiment(self.config.search.exp_key) or {}
                    running = exp.get("status") == ExperimentStatus.RUNNING.value
                if not running:
                    continue
            self._restarts[i] += 1
            if self._restarts[i] > WORKER_RESTARTS:
                logger.error(
                    "worker %d %s again: not restarted any more (%d restarts); see %s",
                    i,
                    describe_exit(code),
                    WORKER_RESTARTS,
                    self._log_path(i),
                )
                continue
            logger.warning(
                "worker %d (pid %d) %s; its trial goes back to the queue when its lease runs "
                "out; starting a new one (log: %s)",
                i,
                proc.pid,
                describe_exit(code),
                self._log_path(i),
            )
            self.procs[i] = self._spawn(i)
        if all(p.poll() is not None for p in self.procs) and running is not False:
            code = self.procs[0].returncode
            raise HyperfleetError(
                f"no worker left: all {len(self.procs)} kept exiting (first: "
                f"{describe_exit(code)}); see their logs in {self.log_dir}"
            )

    def _finish_running_trials(self) -> None:
        """The first Ctrl-C (or SIGTERM): no new trials; each worker finishes its running
        trial, records it and exits. A second Ctrl-C hands the running trials back at once."""
        live = [p for p in self.procs if p.poll() is None]
        if not live:
            return
        for proc in live:
            proc.send_signal(signal.SIGTERM)  # one: finish the trial, then exit
        logger.warning(
            "stopping: %s finish their running trials first (Ctrl-C again to hand them back "
            "to the queue now)",
            counted(len(live), "worker"),
        )
        try:
            for proc in live:
                proc.wait()
        except KeyboardInterrupt:
            logger.warning("handing the running trials back now")
            for proc in live:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)  # the second: hand the trial back

    def _stop_workers(self, grace_s: float = 30.0) -> None:
        """Workers leave by themselves once the search is over; stragglers get two SIGTERMs
        (the second hands any trial back at once), then SIGKILL."""
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(0.05)
        for _ in range(2):
            for proc in self.procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker pid %d did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait()
