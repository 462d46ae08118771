"""``hyperfleet cancel`` on a search of very short trials, where the loop keeps a deep queue and
workers hold several claimed trials at once: no trial is claimed after the cancel and none
starts later than a worker's cached read of the flag allows (the loop checks before every
insert and sweeps what it queued meanwhile, workers cancel what they held), and the search ends
CANCELLED without waiting on anything. It used to go on claiming and running trials for up to a
second after the cancel."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

from coordinator.states import TrialState
from coordinator.store import connect
from tests.conftest import cli_env, hyperfleet, start_worker, stop_all, wait_for

SLACK = dt.timedelta(seconds=0.3)


def test_no_trial_starts_after_cancel_returns(server, db_name, tmp_path: Path) -> None:
    store = connect(server.uri, db_name)
    common = ["--mongo", server.uri, "--db", db_name]
    workers = [start_worker(server.uri, db_name, log=tmp_path / f"w{i}.log") for i in range(2)]
    search_log = tmp_path / "search.log"
    search = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "search", "quadratic", *common, "--exp-key", "fast"]
        + ["--max-evals", "5000", "--set", "sleep=0.005", "--no-progress"],
        stdout=open(search_log, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env=cli_env(),
    )
    try:
        wait_for(
            lambda: store.count("fast", [TrialState.DONE]) >= 60,
            90,
            what="60 trials done (workers then hold several at once)",
        )
        cancel = hyperfleet("cancel", *common, "--exp-key", "fast")
        assert cancel.returncode == 0, cancel.stderr
        assert search.wait(60) == 0, search_log.read_text()[-3000:]
        exp = store.get_experiment("fast")
        assert exp["status"] == "cancelled"
        at = exp["cancelled_at"]
        docs = store.trials("fast")
        assert not [d["tid"] for d in docs if d["state"] in (TrialState.NEW, TrialState.RUNNING)]
        # a trial takes 5 ms; a worker trusts what it read of the flag for 0.25 s
        claimed_late = [d["tid"] for d in docs if (d.get("book_time") or at) > at + SLACK]
        ended_late = [d["tid"] for d in docs if (d.get("ended") or at) > at + 2 * SLACK]
        assert claimed_late == [] and ended_late == [], (at, claimed_late, ended_late)
    finally:
        stop_all([search, *workers])
    for log in [search_log, tmp_path / "w0.log", tmp_path / "w1.log"]:
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
