"""``hyperfleet local``: embedded server + N worker processes + the coordinator, in one command.

The server and the workers die with this process, even when it is SIGKILLed (see
:func:`coordinator.server.die_with_parent`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coordinator import defaults
from coordinator.errors import ConfigError, HyperfleetError, counted
from coordinator.search import Coordinator, SearchConfig, SearchOutcome
from coordinator.server import EmbeddedServer, die_with_parent
from coordinator.store import TrialStore, connect

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
    after: Callable[[TrialStore, SearchOutcome], None] | None = None


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


def check_gpu_ids(gpus: list[str], option: str = "--gpus") -> None:
    """Refuse GPU ids this machine does not have (``nvidia-smi -L`` numbers them, as
    ``CUDA_VISIBLE_DEVICES`` does): a worker pinned to a missing GPU would quietly train on
    the CPU. Without a working ``nvidia-smi`` nothing can be checked: a warning says so."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.warning(
            "%s %s: cannot check the GPU ids (nvidia-smi -L: %s); a worker pinned to a GPU "
            "that does not exist trains on the CPU",
            option,
            ",".join(gpus),
            e.strerror if isinstance(e, OSError) else "timed out",
        )
        return
    found = sum(line.startswith("GPU ") for line in listed.stdout.splitlines())
    if listed.returncode != 0 or not found:
        why = (listed.stderr or listed.stdout).strip().splitlines()[:1] or ["no GPU listed"]
        logger.warning(
            "%s %s: nvidia-smi -L lists no GPU (%s); workers pinned to GPUs train on the CPU",
            option,
            ",".join(gpus),
            why[0][:200],
        )
        return
    missing = [g for g in gpus if int(g) >= found]
    if missing:
        raise ConfigError(
            f"{option} {','.join(gpus)}: this machine has {counted(found, 'GPU')} (ids 0 to "
            f"{found - 1}, see nvidia-smi -L); there is no GPU {missing[0]}"
        )


class LocalRun:
    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.server = EmbeddedServer(config.db_path)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_dir = config.log_dir or Path(config.db_path).resolve().parent / "logs"

    def run(self) -> SearchOutcome:
        self.server.start()
        try:
            store = connect(self.server.uri, self.config.db)
            self._start_workers()
            coordinator = Coordinator(store, self.config.search)
            coordinator.on_tick = lambda trials, counts: self._check_workers()
            outcome = coordinator.run()
            if self.config.after is not None:
                self.config.after(store, outcome)
            return outcome
        finally:
            self._stop_workers()
            self.server.stop()

    def _start_workers(self) -> None:
        from coordinator.cli.options import check_exp_key

        check_exp_key(self.config.search.exp_key, "exp key")  # it names the log files
        self.log_dir.mkdir(parents=True, exist_ok=True)
        envs = self.config.worker_envs or [{} for _ in range(self.config.workers)]
        for i, extra_env in enumerate(envs):
            env = {**os.environ, "HYPERFLEET_MONGO": self.server.uri, **extra_env}
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
            log_path = self.log_dir / f"{self.config.search.exp_key}-worker-{i}.log"
            with open(log_path, "ab") as log:
                # SIGKILLed with us: a search nobody drives needs no workers; their trials
                # are requeued by the next run's reaper
                self.procs.append(
                    subprocess.Popen(
                        die_with_parent(cmd, signal.SIGKILL),
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
        logger.info("started %s; their logs: %s", counted(len(self.procs), "worker"), self.log_dir)

    def _check_workers(self) -> None:
        dead = [p for p in self.procs if p.poll() is not None and p.returncode != 0]
        if dead and len(dead) == len(self.procs):
            raise HyperfleetError(
                f"all {len(dead)} workers exited with errors (first: code {dead[0].returncode}); "
                f"see their logs in {self.log_dir}"
            )

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
