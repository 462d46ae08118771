"""One coordinator per experiment (issue 22, item 2): a second coordinator of a live search is
refused in one line naming the holder's host and pid, a dead one is taken over, a coordinator
that was taken over stops queueing, plain fmin refuses a live search, and ``--max-evals`` is
never exceeded. Real server, real coordinator and worker processes."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import subprocess
import sys
import threading
import time

import pytest

from coordinator.errors import ExperimentBusy
from coordinator.experiment_lease import Holder
from coordinator.search import Coordinator, SearchConfig, prepare_experiment
from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore
from search_spaces import get_space
from tests.conftest import ROOT, cli_env, hyperfleet, start_worker, stop_all, wait_for


def _config(exp_key: str, max_evals: int = 4, **kw) -> SearchConfig:
    space = get_space("quadratic")
    return SearchConfig(
        space=space,
        settings=space.resolve_settings({}),
        exp_key=exp_key,
        max_evals=max_evals,
        **kw,
    )


def _search(uri: str, db: str, key: str, max_evals: int) -> list[str]:
    return [
        sys.executable, "-m", "coordinator", "search", "quadratic", "--mongo", uri, "--db", db,
        "--exp-key", key, "--max-evals", str(max_evals), "--set", "sleep=0.3", "--no-progress",
    ]  # fmt: skip


def _held(store: TrialStore, key: str) -> bool:
    exp = store.get_experiment(key) or {}
    return isinstance((exp.get("coordinator") or {}).get("renewed"), dt.datetime)


def test_a_second_coordinator_is_refused_naming_host_and_pid(
    server: EmbeddedServer, db_name: str, store: TrialStore
) -> None:
    key = "two-coordinators"
    worker = start_worker(server.uri, db_name, "--exp-key", key, "--idle-timeout", "60")
    first = subprocess.Popen(
        _search(server.uri, db_name, key, 8), cwd=ROOT, env=cli_env(), stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: _held(store, key), 60, what="the first coordinator's lease")
        second = hyperfleet(*_search(server.uri, db_name, key, 8)[3:], timeout=60)
        assert second.returncode != 0, second.stderr
        assert f"host {socket.gethostname()} pid {first.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert first.wait(120) == 0, first.stderr.read()  # type: ignore[union-attr]
    finally:
        stop_all([worker])
        if first.poll() is None:
            first.kill()
            first.wait()
    assert store.count(key, [TrialState.DONE]) == 8
    assert len(store.trials(key)) == 8
    exp = store.get_experiment(key)
    assert exp["coordinator"]["renewed"] is None  # released at the end: a rerun starts at once


def test_a_killed_coordinator_is_taken_over_and_max_evals_holds(
    server: EmbeddedServer, db_name: str, store: TrialStore
) -> None:
    key = "taken-over"
    worker = start_worker(server.uri, db_name, "--exp-key", key, "--idle-timeout", "60")
    first = subprocess.Popen(
        _search(server.uri, db_name, key, 10),
        cwd=ROOT,
        env=cli_env(),
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: store.count(key, [TrialState.DONE]) >= 2, 60, what="two trials")
        first.kill()
        first.wait()  # its pid is gone from this host: no need to wait out its lease
        started = time.monotonic()
        second = hyperfleet(*_search(server.uri, db_name, key, 10)[3:], timeout=120)
    finally:
        stop_all([worker])
    assert second.returncode == 0, second.stderr
    assert f"taking over '{key}' from the coordinator host" in second.stderr
    assert f"pid {first.pid}" in second.stderr and "its pid is gone" in second.stderr
    assert time.monotonic() - started < 60
    assert store.count(key, [TrialState.DONE]) == 10
    assert len(store.trials(key)) == 10


def test_a_live_lease_of_another_host_refuses_then_expires(
    store: TrialStore, caplog: pytest.LogCaptureFixture
) -> None:
    key = "elsewhere"
    prepare_experiment(store, _config(key))
    other = Holder("far:7:abc", "far-away-host", 7, lease_s=2.0)
    store.experiments.update_one(
        {"_id": key}, {"$set": {"coordinator": other.stamp(store.server_time())}}
    )
    with pytest.raises(ExperimentBusy, match="another coordinator \\(host far-away-host pid 7\\)"):
        prepare_experiment(store, _config(key), Holder.this_process())
    time.sleep(2.2)
    with caplog.at_level(logging.WARNING, logger="coordinator.experiment_lease"):
        me = Holder.this_process()
        prepare_experiment(store, _config(key), me)
    assert "its lease expired" in caplog.text and "host far-away-host pid 7" in caplog.text
    assert store.get_experiment(key)["coordinator"]["id"] == me.id


def test_a_coordinator_that_was_taken_over_stops_queueing(store: TrialStore) -> None:
    key = "paused"
    coordinator = Coordinator(store, _config(key, max_evals=50, coordinator_lease_s=0.9))
    failed: list[BaseException] = []

    def run() -> None:
        try:
            coordinator.run()
        except BaseException as e:  # noqa: BLE001 - the test reads it
            failed.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: store.count(key, [TrialState.NEW]) >= 2, 30, what="a queue")
    other = Holder("far:9:def", "far-away-host", 9)  # what a takeover writes
    store.experiments.update_one(
        {"_id": key}, {"$set": {"coordinator": other.stamp(store.server_time())}}
    )
    queued = len(store.trials(key))
    thread.join(10)
    assert not thread.is_alive()
    assert failed and isinstance(failed[0], ExperimentBusy), failed
    assert "taken over by the coordinator host far-away-host pid 9" in str(failed[0])
    assert len(store.trials(key)) == queued  # nothing queued after the takeover
    assert store.get_experiment(key)["coordinator"]["id"] == other.id  # not released by it


def test_plain_fmin_refuses_an_experiment_a_live_coordinator_holds(store: TrialStore) -> None:
    from hyperopt import fmin, hp

    from coordinator.trials import HyperfleetTrials

    key = "held"
    prepare_experiment(store, _config(key), Holder("far:3:x", "far-away-host", 3))
    trials = HyperfleetTrials(store, exp_key=key)
    with pytest.raises(ExperimentBusy, match="host far-away-host pid 3"):
        fmin(lambda x: x, hp.uniform("x", 0, 1), max_evals=2, trials=trials)
    assert store.trials(key) == []


def test_a_pid_no_process_can_have_is_not_taken_for_gone() -> None:
    """Attacker review: a stored pid of 2**40 made os.kill raise OverflowError, and search,
    local and a local rerun died with a traceback; junk is not proof that a process is gone."""
    from coordinator.experiment_lease import pid_gone

    for junk in (2**40, -1, 0, "12", None, True):
        assert pid_gone(junk) is False  # type: ignore[arg-type]
