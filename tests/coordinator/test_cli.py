"""The real ``hyperfleet`` command in separate processes against a real server."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coordinator.states import TrialState
from coordinator.store import connect
from coordinator.trials import HyperfleetTrials
from tests.conftest import ROOT, TEST_SPACES, cli_env, hyperfleet, start_worker, stop_all, wait_for


def test_local_quadratic_two_workers(tmp_path: Path) -> None:
    db_path = tmp_path / "db"
    out = hyperfleet(
        "local",
        "quadratic",
        "--workers",
        "2",
        "--max-evals",
        "30",
        "--seed",
        "1",
        # instant trials would let the first worker whose trial process is up take all 30
        # before the other's has started (seconds on a loaded machine): 0.3 s trials leave the
        # other worker 9 s to join, both started together (0.1 s was done 1.8 s after the first)
        "--set",
        "sleep=0.3",
        "--exp-key",
        "q",
        "--db-path",
        str(db_path),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    best = re.search(r"best trial: tid (\d+), loss (\S+)", out.stdout)
    best_tid, loss = int(best[1]), float(best[2])
    # loosely: which points fleet TPE draws depends on when results arrive (its random start-up
    # ends on results, its liar sees the pending trials), so no tight bound is timing-proof, and
    # 30 random draws alone miss loss < 0.5 one time in nine (the old bound barely told TPE from
    # random anyway; test_fleet_tpe covers its quality). Below 5: a working search of 30 draws
    # misses it about never (random: once in 2,000 runs); one whose points or losses go wrong
    # (x stuck at a bound, results lost) does not get there. The reported best is checked
    # exactly against the documents below
    assert loss < 5.0, out.stdout
    assert 'best params: {"x":' in out.stdout
    assert re.search(r"experiment q: 2 workers \(CPU, \d+ threads? each\)", out.stderr)
    # results stay on disk: a new server on the same path reads them
    from coordinator.server import EmbeddedServer

    with EmbeddedServer(db_path) as srv:
        store = connect(srv.uri)
        docs = store.trials("q")
        assert len(docs) == 30
        assert all(d["state"] == TrialState.DONE for d in docs)
        assert all(set(d["params"]) == {"x"} for d in docs)
        assert all(d["result"]["loss"] == d["params"]["x"] ** 2 for d in docs)
        (reported,) = [d for d in docs if d["tid"] == best_tid]
        assert reported["result"]["loss"] == min(d["result"]["loss"] for d in docs)
        assert f"{reported['result']['loss']:.6g}" == best[2]
        owners = {d["worker"]["id"] for d in docs}
        assert len(owners) == 2, "both workers should have run trials"
        assert all(d["worker"]["host"] and d["worker"]["pid"] for d in docs)
        assert all(d["duration_s"] >= 0 and d["ended"] >= d["book_time"] for d in docs)


def test_server_workers_and_search_as_separate_processes(tmp_path: Path) -> None:
    srv = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator",
            "server",
            "--port",
            "0",
            "--db-path",
            str(tmp_path / "db"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        line = srv.stdout.readline()
        uri = re.search(r"(mongodb://\S+)", line)[1]
        workers = [start_worker(uri, "hyperfleet", "--exp-key", "branin-test") for _ in range(2)]
        out = hyperfleet(
            "search",
            "branin",
            "--mongo",
            uri,
            "--exp-key",
            "branin-test",
            "--max-evals",
            "40",
            "--seed",
            "3",
        )
        assert out.returncode == 0, out.stderr
        assert "best params" in out.stdout
        trials = HyperfleetTrials(connect(uri), exp_key="branin-test")
        losses = trials.losses()
        assert len(losses) == 40 and all(loss is not None for loss in losses)
        # branin spans 0.4 .. ~300; 40 trials (20 of them random start-up) land well below 10.
        # It checks that results flow back, not TPE's quality (docs/algorithms.md measures that)
        assert min(losses) < 10.0
        # workers leave by themselves once the search is over
        for w in workers:
            assert w.wait(30) == 0
    finally:
        srv.send_signal(signal.SIGINT)
        srv.wait(30)
    assert srv.returncode == 0


def test_exp_key_from_the_environment(server, db_name: str) -> None:
    """HYPERFLEET_EXP_KEY stands for --exp-key (compose and the sbatch script rely on it): the
    search takes its name from it, and a worker that serves only that search leaves at its end."""
    env = cli_env(HYPERFLEET_MONGO=server.uri, HYPERFLEET_DB=db_name, HYPERFLEET_EXP_KEY="env-q")
    worker = start_worker(server.uri, db_name, env=env)
    try:
        out = hyperfleet(
            "search", "quadratic", "--max-evals", "4", "--seed", "1", "--no-progress", env=env
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("experiment env-q: done 4 "), out.stdout
        assert "stopped early" not in out.stdout  # all its trials were queued
        assert worker.wait(30) == 0, "the worker should serve env-q only and leave when it is over"
    finally:
        stop_all([worker])


def test_a_search_cut_short_says_what_cut_it(server, db_name: str) -> None:
    """Review: a ``--timeout`` or ``--loss-threshold`` that ends a search before its
    ``--max-evals`` was said only in the log; the summary line now says it too."""
    worker = start_worker(server.uri, db_name, "--exp-key", "cut", "--idle-timeout", "30")
    try:
        common = ["--mongo", server.uri, "--db", db_name, "--exp-key", "cut", "--no-progress"]
        out = hyperfleet(
            "search", "quadratic", *common, "--max-evals", "100000", "--timeout", "0.3"
        )
        assert out.returncode == 0, out.stderr
        first = out.stdout.splitlines()[0]
        assert first.endswith(" s (stopped early: timeout of 0.3 s reached)"), out.stdout
        out = hyperfleet(
            "search", "quadratic", *common, "--max-evals", "100000", "--loss-threshold", "1e9"
        )
        assert "(stopped early: best loss below 1e+09)" in out.stdout, out.stdout
    finally:
        stop_all([worker])


def test_plain_hyperopt_fmin_with_trust_pickled_worker(
    server, db_name: str, tmp_path: Path
) -> None:
    script = tmp_path / "plain.py"
    script.write_text(
        textwrap.dedent(f"""
        from hyperopt import fmin, hp, tpe
        from coordinator.trials import HyperfleetTrials
        trials = HyperfleetTrials({server.uri!r}, exp_key="plain", db={db_name!r})
        best = fmin(lambda x: (x - 1) ** 2, hp.uniform("x", -3, 3), algo=tpe.suggest,
                    max_evals=10, trials=trials, max_queue_len=2, show_progressbar=False)
        print("BEST", best, len(trials.losses()))
    """)
    )
    untrusted = start_worker(server.uri, db_name, "--idle-timeout", "3")
    trusted = start_worker(server.uri, db_name, "--trust-pickled", "--idle-timeout", "5")
    try:
        out = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        assert out.returncode == 0, out.stderr
        assert re.search(r"BEST \{'x': [-0-9.e]+\} 10", out.stdout)
        docs = connect(server.uri, db_name).trials("plain")
        owners = {d["owner"] for d in docs}
        assert len(owners) == 1, "only the --trust-pickled worker may run pickled objectives"
        assert all(d["params"] is not None for d in docs)
    finally:
        stop_all([untrusted, trusted])


def test_objective_error_is_recorded_and_worker_goes_on(server, db_name: str) -> None:
    worker = start_worker(server.uri, db_name, "--spaces", TEST_SPACES, "--exp-key", "boom")
    try:
        out = hyperfleet(
            "search",
            "boom",
            "--mongo",
            server.uri,
            "--db",
            db_name,
            "--exp-key",
            "boom",
            "--max-evals",
            "8",
            "--algo",
            "rand",
            "--seed",
            "0",
            "--spaces",
            TEST_SPACES,
        )
        store = connect(server.uri, db_name)
        errors = store.trials("boom", [TrialState.ERROR])
        done = store.trials("boom", [TrialState.DONE])
        assert errors and done and len(errors) + len(done) == 8
        err = errors[0]["error"]
        assert err["type"] == "ValueError" and "too large" in err["message"]
        assert "Traceback" in err["traceback"] and "_boom" in err["traceback"]
        assert out.returncode == 0, out.stderr
    finally:
        stop_all([worker])


def test_nan_loss_fails_the_trial_and_search_completes(server, db_name: str) -> None:
    worker = start_worker(server.uri, db_name, "--spaces", TEST_SPACES, "--exp-key", "nan")
    try:
        out = hyperfleet(
            "search",
            "nan",
            "--mongo",
            server.uri,
            "--db",
            db_name,
            "--exp-key",
            "nan",
            "--max-evals",
            "3",
            "--spaces",
            TEST_SPACES,
        )
        assert out.returncode == 1 and "no trial of 'nan' succeeded" in out.stderr
        docs = connect(server.uri, db_name).trials("nan")
        assert len(docs) == 3
        assert all(d["state"] == TrialState.DONE and d["result"]["status"] == "fail" for d in docs)
        assert all("loss is nan" in d["result"]["failure"] for d in docs)
    finally:
        stop_all([worker])


BAD_INPUT = [
    (["search", "nosuch", "--mongo", "{uri}"], "unknown search space 'nosuch'"),
    (["search", "quadratic", "--mongo", "{uri}", "--set", "nope=1"], "unknown setting 'nope'"),
    (["search", "quadratic", "--mongo", "{uri}", "--set", "sleep=abc"], "not a valid float"),
    (["search", "quadratic", "--mongo", "{uri}", "--set", "sleep=-1"], "must be >= 0.0"),
    (["search", "quadratic", "--mongo", "{uri}", "--set", "sleep"], "expected KEY=VALUE"),
    (["search", "quadratic", "--mongo", "mongodb://h:notaport"], "malformed MongoDB URI"),
    (["search", "quadratic", "--mongo", "localhost:27017"], "malformed MongoDB URI"),
    (
        ["search", "quadratic", "--mongo", "{uri}", "--max-evals", "0"],
        "'--max-evals': 0 is not in the range x>=1",
    ),
    (["search", "quadratic", "--mongo", "{uri}", "--algo", "sa"], "unknown --algo 'sa'"),
    (["search", "quadratic", "--mongo", "{uri}", "--spaces", "{broken}"], "syntax error at line 2"),
    (["worker", "--mongo", "{uri}", "--gpu", "x1"], "--gpu 'x1'"),
    (["cancel", "--mongo", "{uri}", "--exp-key", "nosuch"], "no experiment 'nosuch'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_is_one_clear_line(server, db_name: str, tmp_path: Path, args, message) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1\ndef oops(:\n")
    argv = [a.format(uri=server.uri, broken=broken) for a in args] + ["--db", db_name]
    out = hyperfleet(*argv, timeout=30)
    assert out.returncode != 0
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert message in lines[0] and "Traceback" not in out.stderr


def test_cancel_names_the_known_experiments_and_explains_plain_fmin(
    server, db_name: str, store
) -> None:
    from tests.conftest import queue_trials

    queue_trials(store, 1, exp_key="real")
    queue_trials(store, 1, exp_key="plain", space=None)  # plain fmin: no experiment document
    base = ["cancel", "--mongo", server.uri, "--db", db_name, "--exp-key"]
    typo = hyperfleet(*base, "rael", timeout=30)
    assert typo.returncode != 0 and "known: real" in typo.stderr
    plain = hyperfleet(*base, "plain", timeout=30)
    assert plain.returncode != 0 and "plain hyperopt fmin" in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1
    assert store.count("plain", [TrialState.NEW]) == 1  # nothing was touched


def test_unreachable_server_inspection_fails_fast_search_waits_its_budget() -> None:
    """Inspection answers at once; a search (a long-running process, often restarted by a
    supervisor while the database restarts) waits up to $HYPERFLEET_OUTAGE_S, saying so at
    once, then fails with one line."""
    import time

    started = time.monotonic()
    out = hyperfleet("status", "--mongo", "mongodb://127.0.0.1:9/", timeout=60)
    assert out.returncode == 1
    assert "cannot reach MongoDB at mongodb://127.0.0.1:9/" in out.stderr
    # a few seconds of server selection plus a cold interpreter (slow on a loaded machine)
    assert time.monotonic() - started < 30

    started = time.monotonic()
    env = cli_env(HYPERFLEET_OUTAGE_S="8")
    out = hyperfleet("search", "quadratic", "--mongo", "mongodb://127.0.0.1:9/", env=env)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert "waiting up to 8 s for it" in lines[0] and "Connection refused" in lines[0]
    assert "cannot reach MongoDB at mongodb://127.0.0.1:9/: waited" in lines[-1]
    assert len(lines) == 2 and time.monotonic() - started < 40

    # a name that does not resolve is waited for too (a restarting container's DNS name)
    env = cli_env(HYPERFLEET_OUTAGE_S="1")
    out = hyperfleet("search", "quadratic", "--mongo", "mongodb://no-such-host.invalid/", env=env)
    assert out.returncode == 1 and "cannot reach MongoDB" in out.stderr


def test_a_worker_started_before_its_server_waits_for_it(tmp_path: Path) -> None:
    """A worker (a SLURM array task, a restarted container) may start while the database is
    still starting: it waits for it within its outage budget instead of exiting."""
    import socket

    from coordinator.server import EmbeddedServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"mongodb://127.0.0.1:{port}/"
    log = tmp_path / "w.log"
    worker = start_worker(
        uri, "late", "--max-trials", "1", log=log, env=cli_env(HYPERFLEET_OUTAGE_S="120")
    )
    try:
        wait_for(lambda: "waiting up to 120 s" in log.read_text(), 60, what="the waiting line")
        assert worker.poll() is None
        with EmbeddedServer(tmp_path / "db", port=port) as srv:
            store = connect(srv.uri, "late")
            from tests.conftest import queue_trials

            queue_trials(store, 1, exp_key="late")
            assert worker.wait(120) == 0, log.read_text()
            assert store.count("late", [TrialState.DONE]) == 1
    finally:
        stop_all([worker])
    assert "answers after" in log.read_text()


def test_search_ctrl_c_says_how_to_continue(server, db_name: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "search", "quadratic", "--mongo", server.uri]
        + ["--db", db_name, "--exp-key", "intr", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    store = connect(server.uri, db_name)
    wait_for(lambda: store.count("intr", [TrialState.NEW]) > 0, 60, what="queued trials")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err and "Aborted!" not in err
    assert "interrupted; experiment 'intr' stays in the database" in err
    assert "rerun the same command to continue" in err


def test_password_comes_from_env_and_is_redacted() -> None:
    out = hyperfleet(
        "search",
        "quadratic",
        timeout=30,
        env=cli_env(HYPERFLEET_MONGO="mongodb://bob:hunter2@127.0.0.1:9/", HYPERFLEET_OUTAGE_S="1"),
    )
    assert out.returncode == 1
    assert "hunter2" not in out.stderr and "bob:***@127.0.0.1:9" in out.stderr


def test_db_path_held_by_another_server(tmp_path: Path) -> None:
    from coordinator.server import EmbeddedServer

    with EmbeddedServer(tmp_path / "db"):
        out = hyperfleet("server", "--port", "0", "--db-path", str(tmp_path / "db"), timeout=60)
    assert out.returncode == 1
    assert "is in use by secantusd-py pid" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_wrong_credentials_against_auth_server(tmp_path: Path) -> None:
    from coordinator.server import EmbeddedServer

    db_path = tmp_path / "db"
    with EmbeddedServer(db_path) as srv:
        from coordinator.store import create_user

        create_user(srv.uri, "alice", "right")
    with EmbeddedServer(db_path, auth=True) as srv:
        host = srv.uri.removeprefix("mongodb://")
        bad = hyperfleet(
            "search",
            "quadratic",
            "--mongo",
            f"mongodb://alice:wrong@{host}?authSource=admin",
            timeout=30,
        )
        assert bad.returncode == 1
        assert "refused access" in bad.stderr and ":wrong@" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        good = hyperfleet("reap", "--mongo", f"mongodb://alice:right@{host}?authSource=admin")
        assert good.returncode == 0 and "reaped 0 trials" in good.stdout


def test_reap_of_an_unknown_exp_key_says_so(server, db_name, store) -> None:
    """A typo in --exp-key used to answer "reaped 0 trials" like a healthy experiment."""
    from tests.conftest import queued_doc

    store.insert_trials([queued_doc(0, "plain")])  # plain fmin: trials, no experiment document
    typo = hyperfleet("reap", "--mongo", server.uri, "--db", db_name, "--exp-key", "plian")
    assert typo.returncode == 0 and "reaped 0 trials" in typo.stdout
    assert "no experiment and no trial 'plian'" in typo.stderr
    known = hyperfleet("reap", "--mongo", server.uri, "--db", db_name, "--exp-key", "plain")
    assert known.returncode == 0 and "note:" not in known.stderr
