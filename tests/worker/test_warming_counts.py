"""A worker that is still warming up serves its search (issue 23): it is in the registry from its
start, so a search started together with its workers does not warn "no live worker serves"."""

from __future__ import annotations

import logging
import signal

import pytest

from coordinator.housekeeping import NoWorkerNotice
from coordinator.store import TrialStore
from tests.conftest import TEST_SPACES, start_worker, stop_all, wait_for


def test_a_warming_worker_is_registered_before_it_is_ready(
    server, db_name, store: TrialStore, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    store.create_experiment(
        {"_id": "warm", "space": "slow_warm", "settings": {"warm_s": 120.0}, "status": "running"}
    )
    log = tmp_path / "w.log"
    worker = start_worker(
        server.uri, db_name, "--exp-key", "warm", "--spaces", TEST_SPACES, "--warm", log=log
    )
    try:
        wait_for(lambda: store.live_workers(30.0, "warm"), 60, what="the worker to register")
        assert "ready" not in log.read_text()  # still inside its 120 s warm-up
        NoWorkerNotice(store, "warm", hint="hyperfleet worker", after_s=0.0).check()
        assert "no live worker serves" not in caplog.text
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0, log.read_text()
    finally:
        stop_all([worker])


def test_no_warning_while_warming_and_the_recovery_is_info(
    store: TrialStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.housekeeping")
    notice = NoWorkerNotice(store, "lonely", hint="hyperfleet worker", after_s=0.0)
    notice.check()
    (warned,) = caplog.records
    assert warned.levelno == logging.WARNING and "no live worker serves" in warned.message
    caplog.clear()
    store.worker_heartbeat({"id": "w1", "exp_key": "lonely", "host": "h", "pid": 1}, None)
    notice._checked = 0.0  # the registry is asked at most once a second
    notice.check()
    (recovered,) = caplog.records
    assert recovered.levelno == logging.INFO and "a worker now serves" in recovered.message
