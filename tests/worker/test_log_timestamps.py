"""Issue 23: timestamps on every log line. A worker's log through a real outage (the embedded
server stopped and started again while the worker runs a trial): the trial child's outage lines
used to go to Python's last-resort handler, bare messages among the timestamped ones."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import connect
from tests.conftest import TEST_SPACES, cli_env, queue_trials, start_worker, stop_all, wait_for
from tests.worker.test_outage_budget import _free_port

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+"
    r"( \(trial process\))?: \S"
)


def test_every_worker_log_line_has_a_timestamp_through_an_outage(tmp_path: Path) -> None:
    port = _free_port()
    srv = EmbeddedServer(tmp_path / "db", port=port).start()
    store = connect(srv.uri, "logs")
    queue_trials(store, 1, space="epochs", settings={"epochs": 60, "sleep": 0.1})
    store.close()
    log = tmp_path / "w.log"
    worker = start_worker(
        srv.uri,
        "logs",
        "--spaces",
        TEST_SPACES,
        "--no-warm",
        *("--heartbeat", "0.5", "--lease", "2.5"),
        log=log,
        env=cli_env(HYPERFLEET_OUTAGE_S="120"),
    )
    try:
        with contextlib.closing(connect(srv.uri, "logs")) as watch:
            running = lambda: watch.trials("exp", [TrialState.RUNNING])  # noqa: E731
            wait_for(lambda: (running() or [{}])[0].get("epochs"), 60, what="a trial's epochs")
        srv.stop()
        # longer than a store call waits for a server (5 s) before it fails: the worker and its
        # trial child both meet the outage, whatever each was doing when the server went
        time.sleep(6.5)
        srv = EmbeddedServer(tmp_path / "db", port=port).start()
        with contextlib.closing(connect(srv.uri, "logs")) as fresh:
            wait_for(
                lambda: fresh.count("exp", [TrialState.DONE]) == 1, 90, what="the trial to finish"
            )
    finally:
        stop_all([worker])
        srv.stop()
    lines = log.read_text().splitlines()
    bare = [line for line in lines if not LINE.match(line)]
    assert not bare, "\n".join(lines)
    outage = [line for line in lines if "lost contact with MongoDB" in line]
    assert any("(trial process)" in line for line in outage), "\n".join(lines)
    assert any("reachable again" in line for line in lines), "\n".join(lines)
