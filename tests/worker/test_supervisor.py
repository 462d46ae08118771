"""worker/supervisor.py with real child processes: a trial that returns, one whose process dies
(``os._exit``, SIGKILL), one that is interrupted; the child is reused after success and replaced
after a crash. The trials come from tests/spaces_for_tests.py and the embedded server."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from coordinator.errors import Interrupted, TrialCrashed
from coordinator.server import EmbeddedServer
from coordinator.store import Lease, TrialStore
from tests.conftest import TEST_SPACES, queue_trials
from worker.supervisor import ChildRunner, InProcessRunner, RunnerConfig, describe_exit


def lease_for(store: TrialStore, exp_key: str, space: str, settings: dict | None = None) -> Lease:
    queue_trials(store, 1, exp_key=exp_key, space=space, settings=settings)
    lease = store.reserve_trial("w-test", exp_key=exp_key)
    assert lease is not None
    return lease


@pytest.fixture
def config(server: EmbeddedServer, db_name: str) -> RunnerConfig:
    return RunnerConfig(server.uri, db_name, (TEST_SPACES,), trust_pickled=False, outage_s=5.0)


@pytest.fixture
def child(config: RunnerConfig) -> Iterator[ChildRunner]:
    runner = ChildRunner(config)
    runner.start()
    yield runner
    proc = runner._proc
    runner.close()
    assert proc is None or not proc.is_alive(), "close() must end the child"


def test_describe_exit() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(-9).startswith("killed by SIGKILL (out of memory?")
    assert describe_exit(None) == "still running"


def test_child_returns_outcomes_and_stays_warm(store: TrialStore, child: ChildRunner) -> None:
    lease = lease_for(store, "ok", "whoami", {"sleep": 0.0})
    first = child.run(lease, {"pid": 1}, threading.Event())
    assert first.error is None and first.result["status"] == "ok"
    assert first.result["worker_pid"] == 1  # ``extra`` reached the objective as ctx.info
    pid = child._proc.pid
    assert pid != os.getpid()
    lease = lease_for(store, "ok2", "whoami", {"sleep": 0.0})
    assert child.run(lease, {"pid": 1}, threading.Event()).result["status"] == "ok"
    assert child._proc.pid == pid  # the same warm child ran both


def test_a_dying_child_is_a_crash_and_is_replaced(store: TrialStore, child: ChildRunner) -> None:
    for mode, reason in (("exit", "exited with code 3"), ("kill", "killed by SIGKILL")):
        lease = lease_for(store, f"crash-{mode}", "crash", {"mode": mode})
        with pytest.raises(TrialCrashed, match=reason):
            child.run(lease, {}, threading.Event())
        assert child._proc is None  # discarded; the next run starts a fresh child
    lease = lease_for(store, "after", "whoami", {"sleep": 0.0})
    assert child.run(lease, {"pid": 2}, threading.Event()).result["status"] == "ok"


class KilledAfterCheck(ChildRunner):
    """Kills its idle child for real right after the liveness check, before the trial is sent:
    where a SIGKILL between trials can land (chaos CI failure, stop 10: ConnectionResetError).
    ``wait``: until the child is wholly gone (its pipe end closed), or not at all (it may still
    be dying while the trial is sent)."""

    def __init__(self, config: RunnerConfig, budget: int, wait: bool) -> None:
        super().__init__(config)
        self.budget, self.wait, self.kills = budget, wait, 0

    def _ensure_child(self) -> None:
        super()._ensure_child()
        if self.kills < self.budget:
            self.kills += 1
            os.kill(self._proc.pid, signal.SIGKILL)
            if self.wait:  # WNOWAIT: seen exited (every thread), not reaped
                flags = os.WEXITED | os.WNOWAIT
                os.waitid(os.P_PID, self._proc.pid, flags)


def test_a_child_killed_between_trials_is_replaced(store: TrialStore, config: RunnerConfig) -> None:
    runner = KilledAfterCheck(config, budget=1, wait=True)
    try:
        lease = lease_for(store, "between", "whoami", {"sleep": 0.0})
        outcome = runner.run(lease, {"pid": 4}, threading.Event())
        assert outcome.result["status"] == "ok" and runner.kills == 1  # a fresh child ran it
        runner.budget = 3  # every fresh child dies too: a crash of the trial, not a traceback
        lease = lease_for(store, "between2", "whoami", {"sleep": 0.0})
        with pytest.raises(TrialCrashed, match="could not be reached"):
            runner.run(lease, {"pid": 4}, threading.Event())
        assert runner._proc is None
    finally:
        runner.close()


def test_a_child_dying_as_the_trial_is_sent_is_a_crash(
    store: TrialStore, config: RunnerConfig
) -> None:
    for i in range(5):
        runner = KilledAfterCheck(config, budget=1, wait=False)
        try:
            lease = lease_for(store, f"dying{i}", "whoami", {"sleep": 0.0})
            try:
                outcome = runner.run(lease, {"pid": 5}, threading.Event())
                assert outcome.result["status"] == "ok"  # the pipe broke at once: a fresh child
            except TrialCrashed as crash:
                assert "SIGKILL" in str(crash)  # sent before the pipe broke: a crash, no traceback
            assert runner.kills == 1
        finally:
            runner.close()


def test_an_interrupted_trial_kills_the_child(store: TrialStore, child: ChildRunner) -> None:
    lease = lease_for(store, "slow", "whoami", {"sleep": 60.0})
    interrupt = threading.Event()
    threading.Timer(0.3, interrupt.set).start()
    proc = child._proc
    with pytest.raises(Interrupted):
        child.run(lease, {"pid": 3}, interrupt)
    assert not proc.is_alive() and child._proc is None


def test_in_process_runner_runs_here(store: TrialStore, config: RunnerConfig) -> None:
    runner = InProcessRunner(config)
    try:
        lease = lease_for(store, "here", "whoami", {"sleep": 0.0})
        outcome = runner.run(lease, {"pid": os.getpid()}, threading.Event())
    finally:
        runner.close()
    assert outcome.result["worker_pid"] == os.getpid()


def test_a_stopped_child_is_killed_after_the_limit(store: TrialStore, config: RunnerConfig) -> None:
    """A SIGSTOPped trial process kept its trial forever: the worker's heartbeat renews the
    lease while the child does nothing (review finding). Past ``stopped_limit_s`` it is
    killed and the trial is a crash (handed back, retried elsewhere)."""
    import dataclasses

    runner = ChildRunner(dataclasses.replace(config, stopped_limit_s=1.0))
    try:
        runner.start()
        lease = lease_for(store, "frozen", "whoami", {"sleep": 60.0})
        pid = runner._proc.pid
        threading.Timer(0.5, os.kill, (pid, signal.SIGSTOP)).start()
        started = time.monotonic()
        with pytest.raises(TrialCrashed, match=r"stopped \(SIGSTOP\) for \d+ s"):
            runner.run(lease, {"pid": 6}, threading.Event())
        assert time.monotonic() - started < 20 and runner._proc is None
    finally:
        runner.close()


def test_a_child_that_cannot_be_started_stops_the_worker_in_one_line(
    store: TrialStore, config: RunnerConfig
) -> None:
    """No file descriptor left (EMFILE): every trial would crash and lose an attempt; the
    worker exits with one line instead (its trial is reaped when its lease runs out)."""
    import resource

    from coordinator.errors import HyperfleetError

    lease = lease_for(store, "nofd", "whoami", {"sleep": 0.0})
    runner = ChildRunner(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    fillers: list[int] = []
    try:
        # fill every free number below the limit (earlier tests may have left holes), so the
        # pipe the runner needs has none
        with pytest.raises(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        with pytest.raises(HyperfleetError, match="cannot start a trial process .*Too many open"):
            runner.run(lease, {"pid": 7}, threading.Event())
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        runner.close()
    assert runner._proc is None
