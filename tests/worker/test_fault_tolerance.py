"""Fault tolerance with real processes that really die: leases, reaper, fencing, two-stage
shutdown, crash isolation, coordinator resume, server restarts, cancel."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore, connect
from tests.conftest import (
    TEST_SPACES,
    cli_env,
    hyperfleet,
    kill_worker_mid_trial,
    queue_trials,
    search_quadratic,
    start_worker,
    stop_all,
    wait_for,
)

FAST_LEASE = ("--heartbeat", "0.3", "--lease", "1.5")


def search_proc(uri: str, db: str, *args: str, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator", "search", "--mongo", uri, "--db", db, *args],
        stdout=open(log, "a"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
    )


def running_doc(store: TrialStore, exp_key: str, exclude: set[int] = frozenset()):
    docs = store.trials(exp_key, [TrialState.RUNNING])
    docs = [d for d in docs if d["tid"] not in exclude]
    return docs[0] if docs else None


def assert_each_tid_done_once(store: TrialStore, exp_key: str, n: int) -> list[dict]:
    docs = store.trials(exp_key)
    tids = [d["tid"] for d in docs]
    assert len(tids) == len(set(tids)), "a tid appears in two documents"
    done = [d for d in docs if d["state"] == TrialState.DONE]
    assert len(done) == n, collections.Counter(d["state"] for d in docs)
    return done


def test_sigkill_workers_mid_trial_search_completes(server, db_name, tmp_path) -> None:
    store = connect(server.uri, db_name)
    workers = [
        start_worker(server.uri, db_name, *FAST_LEASE, log=tmp_path / "w.log") for _ in range(3)
    ]
    search = search_proc(
        server.uri,
        db_name,
        "quadratic",
        "--exp-key",
        "kill",
        "--max-evals",
        "20",
        "--set",
        "sleep=0.4",
        "--seed",
        "1",
        log=tmp_path / "search.log",
    )
    killed_tids: set[int] = set()
    deadline = time.monotonic() + 120
    try:
        while len(killed_tids) < 5:
            assert time.monotonic() < deadline, f"only {len(killed_tids)} kills landed mid-trial"
            # a kill counts only if the worker died holding its trial: one that ended between
            # the read and the SIGKILL proves nothing (and is not checked below)
            doc = kill_worker_mid_trial(store, "kill", workers)
            if doc is not None:
                killed_tids.add(doc["tid"])
            workers.append(start_worker(server.uri, db_name, *FAST_LEASE, log=tmp_path / "w.log"))
        assert search.wait(120) == 0, (tmp_path / "search.log").read_text()[-2000:]
    finally:
        stop_all([search, *workers])
    done = assert_each_tid_done_once(store, "kill", 20)
    lost = [d for d in done if d["tid"] in killed_tids]
    assert len(lost) == 5
    for doc in lost:
        assert doc["attempts"] == 1 and doc["attempt"] == 2
        assert doc["attempt_history"][0]["outcome"] == "lost"
        assert "stopped heartbeating" in doc["attempt_history"][0]["reason"]
        assert doc["owner"] != doc["attempt_history"][0]["owner"]


def test_paused_worker_cannot_overwrite_new_owner(server, db_name, tmp_path) -> None:
    store = connect(server.uri, db_name)
    queue_trials(store, 1, exp_key="pause", space="whoami", settings={"sleep": 2.0})
    log_a = tmp_path / "a.log"
    a = start_worker(server.uri, db_name, "--spaces", TEST_SPACES, *FAST_LEASE, log=log_a)
    b = None
    try:
        # 90 s: these waits include a cold worker start-up, slow on a loaded 2-core machine
        first = wait_for(lambda: running_doc(store, "pause"), 90, what="worker A's trial")
        assert first["worker"]["pid"] == a.pid
        a.send_signal(signal.SIGSTOP)
        wait_for(lambda: store.reap_expired("pause"), 10, interval=0.2, what="the reaper")
        b = start_worker(server.uri, db_name, "--spaces", TEST_SPACES, *FAST_LEASE)
        done = wait_for(
            lambda: next(iter(store.trials("pause", [TrialState.DONE])), None),
            90,
            what="worker B's result",
        )
        a.send_signal(signal.SIGCONT)
        wait_for(lambda: "lost the lease" in log_a.read_text(), 20, what="A to notice")
        final = store.get_trial("pause", done["tid"])
        assert final["result"]["worker_pid"] == b.pid
        assert final["owner"] == done["owner"] != first["owner"]
        assert final["attempt"] == 2 and final["version"] == done["version"]
    finally:
        a.send_signal(signal.SIGCONT)
        stop_all([a] + ([b] if b else []))


def test_sigterm_finishes_trial_then_exits_zero(server, db_name) -> None:
    store = connect(server.uri, db_name)
    queue_trials(store, 2, exp_key="term", settings={"sleep": 1.5})
    w = start_worker(server.uri, db_name)
    doc = wait_for(lambda: running_doc(store, "term"), 90, what="a running trial")  # start-up
    w.send_signal(signal.SIGTERM)
    assert w.wait(30) == 0
    finished = store.get_trial("term", doc["tid"])
    assert finished["state"] == TrialState.DONE and finished["owner"] == doc["owner"]
    assert store.count("term", [TrialState.NEW]) == 1, "it must not start another trial"


@pytest.mark.parametrize("how", ["twice", "requeue-on-term"])
def test_second_signal_or_requeue_flag_hands_trial_back(server, db_name, how) -> None:
    store = connect(server.uri, db_name)
    queue_trials(store, 1, exp_key="term2", settings={"sleep": 60})
    args = ("--requeue-on-term",) if how == "requeue-on-term" else ()
    w = start_worker(server.uri, db_name, *args)
    doc = wait_for(lambda: running_doc(store, "term2"), 90, what="a running trial")  # start-up
    time.sleep(0.5)  # let the child process start the objective
    started = time.monotonic()
    w.send_signal(signal.SIGTERM)
    if how == "twice":
        time.sleep(0.3)
        w.send_signal(signal.SIGTERM)
    assert w.wait(20) == 0
    assert time.monotonic() - started < 10, "the trial must be handed back at once"
    back = store.get_trial("term2", doc["tid"])
    assert back["state"] == TrialState.NEW and back["owner"] is None
    assert back["attempts"] == 0, "a requeue on shutdown is not a failed attempt"
    assert back["attempt_history"][-1]["outcome"] == "requeued"


@pytest.mark.parametrize(
    ("mode", "reason"), [("exit", "exited with code 3"), ("kill", "killed by SIGKILL")]
)
def test_crashing_trials_are_recorded_and_worker_continues(server, db_name, mode, reason) -> None:
    store = connect(server.uri, db_name)
    queue_trials(store, 2, exp_key="crash", space="crash", settings={"mode": mode}, max_attempts=2)
    w = start_worker(server.uri, db_name, "--spaces", TEST_SPACES)
    try:
        wait_for(lambda: store.count("crash", [TrialState.ERROR]) == 2, 90, what="2 errors")
        for doc in store.trials("crash"):
            assert doc["attempts"] == 2 and doc["attempt"] == 2
            assert [h["outcome"] for h in doc["attempt_history"]] == ["crashed", "crashed"]
            assert reason in doc["attempt_history"][0]["reason"]
            assert doc["error"]["message"].startswith("worker crashed 2 times")
        # the same worker process goes on with other work
        queue_trials(store, 1, exp_key="after", settings={"sleep": 0})
        wait_for(lambda: store.count("after", [TrialState.DONE]) == 1, 60, what="next trial")
        assert w.poll() is None
    finally:
        stop_all([w])


def test_crash_only_once_then_succeeds(server, db_name, tmp_path) -> None:
    store = connect(server.uri, db_name)
    queue_trials(
        store,
        3,
        exp_key="once",
        space="crash",
        settings={"mode": "kill", "once_dir": str(tmp_path)},
    )
    w = start_worker(server.uri, db_name, "--spaces", TEST_SPACES)
    try:
        wait_for(lambda: store.count("once", [TrialState.DONE]) == 3, 90, what="3 done")
    finally:
        stop_all([w])
    for doc in store.trials("once"):
        assert doc["attempts"] == 1 and doc["attempt"] == 2 and doc["result"]["status"] == "ok"


def test_kill_coordinator_and_rerun_gives_exactly_max_evals(server, db_name, tmp_path) -> None:
    store = connect(server.uri, db_name)
    workers = [start_worker(server.uri, db_name, "--exp-key", "resume") for _ in range(2)]
    args = (
        "quadratic",
        "--exp-key",
        "resume",
        "--max-evals",
        "16",
        "--set",
        "sleep=0.3",
        "--seed",
        "5",
    )
    try:
        search = search_proc(server.uri, db_name, *args, log=tmp_path / "s.log")
        wait_for(lambda: store.count("resume", [TrialState.DONE]) >= 4, 60, what="4 done")
        search.send_signal(signal.SIGKILL)
        search.wait()
        out = hyperfleet("search", "--mongo", server.uri, "--db", db_name, *args)
        assert out.returncode == 0, out.stderr
    finally:
        stop_all(workers)
    assert_each_tid_done_once(store, "resume", 16)
    assert len(store.trials("resume")) == 16, "no leftover queued trials"


def test_reusing_exp_key_with_other_settings_is_refused(server, db_name) -> None:
    store = connect(server.uri, db_name)
    store.create_experiment(
        {
            "_id": "same",
            "space": "quadratic",
            "settings": {"sleep": 0.0, "bound": 10.0},
            "algo": "tpe",
            "fingerprint": "x",
            "status": "done",
        }
    )
    out = search_quadratic(server.uri, db_name, "same", "--set", "bound=2", "--max-evals", "1")
    assert out.returncode == 1
    assert "already holds a search with" in out.stderr and "--force" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_server_killed_and_restarted_mid_search(tmp_path) -> None:
    srv = EmbeddedServer(tmp_path / "db").start()
    uri, port = srv.uri, srv.port
    store = connect(uri)
    workers = [
        start_worker(uri, "hyperfleet", "--exp-key", "outage", log=tmp_path / "w.log")
        for _ in range(2)
    ]
    search = search_proc(
        uri,
        "hyperfleet",
        "quadratic",
        "--exp-key",
        "outage",
        "--max-evals",
        "20",
        "--set",
        "sleep=0.2",
        log=tmp_path / "s.log",
    )
    try:
        wait_for(lambda: store.count("outage", [TrialState.DONE]) >= 5, 60, what="5 done")
        srv.kill()
        time.sleep(8)  # longer than the driver's 5 s server selection: our retries take over
        srv = EmbeddedServer(tmp_path / "db", port=port).start()
        assert search.wait(120) == 0, (tmp_path / "s.log").read_text()[-3000:]
        log = (tmp_path / "s.log").read_text() + (tmp_path / "w.log").read_text()
        assert "lost contact with MongoDB" in log and "reachable again" in log
        assert_each_tid_done_once(connect(uri), "outage", 20)
    finally:
        stop_all([search, *workers])
        srv.stop()


def test_outage_longer_than_budget_ends_worker_with_clear_error(tmp_path) -> None:
    srv = EmbeddedServer(tmp_path / "db").start()
    w = start_worker(
        srv.uri, "hyperfleet", log=tmp_path / "w.log", env=cli_env(HYPERFLEET_OUTAGE_S="4")
    )
    store = connect(srv.uri)
    registered = lambda: len(store.list_workers(alive_only=False)) == 1  # noqa: E731
    wait_for(registered, 60, what="the worker to register")
    srv.kill()
    try:
        code = w.wait(60)
    finally:
        stop_all([w])
    text = (tmp_path / "w.log").read_text()
    assert code == 1
    assert "unreachable for" in text and "nothing was lost" in text
    assert "Traceback" not in text


def test_cancel_stops_queue_and_running_trials_at_epoch_boundary(server, db_name, tmp_path):
    epochs = 500  # 100 s a trial: none can end on its own before the cancel lands
    store = connect(server.uri, db_name)
    workers = [
        start_worker(server.uri, db_name, "--spaces", TEST_SPACES, "--exp-key", "cx")
        for _ in range(2)
    ]
    search = search_proc(
        server.uri,
        db_name,
        "epochs",
        "--exp-key",
        "cx",
        "--max-evals",
        "30",
        "--set",
        f"epochs={epochs}",
        "--set",
        "sleep=0.2",
        "--queue-len",
        "6",
        "--spaces",
        TEST_SPACES,
        log=tmp_path / "s.log",
    )
    try:
        wait_for(lambda: store.count("cx", [TrialState.RUNNING]) == 2, 60, what="2 running")
        out = hyperfleet("cancel", "--mongo", server.uri, "--db", db_name, "--exp-key", "cx")
        assert out.returncode == 0 and "queued trials cancelled" in out.stdout
        assert search.wait(60) == 0, (tmp_path / "s.log").read_text()[-2000:]
        for w in workers:
            assert w.wait(30) == 0  # the search is over: workers leave
    finally:
        stop_all([search, *workers])
    docs = store.trials("cx")
    states = collections.Counter(d["state"] for d in docs)
    # the 2 running trials stop early; a trial reserved in the instant of the cancel may too
    assert states[TrialState.CANCEL] >= 1 and 2 <= states[TrialState.DONE] <= 4, states
    for doc in docs:
        if doc["state"] == TrialState.DONE:
            assert doc["result"]["stopped_early"] and doc["result"]["epochs_run"] < epochs
    assert store.get_experiment("cx")["status"] == "cancelled"


@pytest.mark.slow
def test_16_workers_2000_trials_each_evaluated_once(tmp_path) -> None:
    log = tmp_path / "evaluations.txt"
    with EmbeddedServer(tmp_path / "db") as srv:
        workers = [
            start_worker(srv.uri, "hyperfleet", "--spaces", TEST_SPACES, "--exp-key", "many")
            for _ in range(16)
        ]
        started = time.monotonic()
        try:
            out = hyperfleet(
                "search",
                "counted",
                "--mongo",
                srv.uri,
                "--exp-key",
                "many",
                "--max-evals",
                "2000",
                "--algo",
                "rand",
                "--set",
                f"log={log}",
                "--spaces",
                TEST_SPACES,
                timeout=1200,
            )
            seconds = time.monotonic() - started
            assert out.returncode == 0, out.stderr[-2000:]
        finally:
            stop_all(workers)
        evaluated = log.read_text().split()
        assert len(evaluated) == 2000 and len(set(evaluated)) == 2000
        assert_each_tid_done_once(connect(srv.uri), "many", 2000)
        print(f"\n16 workers x 2000 trivial trials: {seconds:.1f} s, {2000 / seconds:.1f} trials/s")
