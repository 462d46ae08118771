"""Issue 10's document fuzzing (findings 2-5, with a real server and real processes): hundreds of
random malformed or foreign job documents, drawn by ``hypothesis`` from a fixed seed, are
inserted while a search with 3 workers runs. The search ends with exactly max-evals of its own
trials DONE, no worker exits, no process prints a traceback, and ``status``, ``top``,
``export``, ``show`` and ``plot`` all work on the polluted database.

Issue 22 adds shapes hypothesis does not draw (:func:`hostile_rows`): a 1 MB exp key (on a
trial workers run, an experiment and a worker row) and timestamps far in the future; and no
line of output or of any log may carry such a value unbounded."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator import rules
from coordinator.states import TrialState
from coordinator.store import connect
from tests.conftest import cli_env, hyperfleet, start_worker, stop_all, wait_for
from tests.raw_store import insert_raw_documents, insert_raw_rows

KEY = "fuzzed"  #: the running search's exp key
OTHER_OWN = "fuzz-other-own"  #: another experiment of hyperfleet's (an experiment document)
SPACE = "quadratic"
DROP = object()
BIG_KEY = "K" * 1_000_000  #: a 1 MB exp key (issue 22, item 5)
FAR = dt.datetime(9999, 12, 31)  #: a timestamp far in the future (issue 22, item 6)
#: the longest line any command or log may print (a bounded value is 80-300 characters)
LONGEST_LINE = 2000

_keys = st.text("abcdefgh_", min_size=1, max_size=6)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "0", "2", "$where", "{'$ne': 1}", "ok", "quadratic", "é\u202e\x00"]),
)
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4)
)


def _nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        doc = {"n": doc}
    return doc


_big = st.sampled_from(
    [
        "x" * 200_000,
        list(range(20_000)),
        _nested(60),
        {f"k{i}": i for i in range(5_000)},
    ]
)


def _misc(tid: Any) -> st.SearchStrategy[Any]:
    good = {"tid": tid, "cmd": None, "idxs": {"x": [tid]}, "vals": {"x": [0.5]}}
    return st.one_of(
        st.just(good),
        st.just({**good, "tid": str(tid)}),
        st.just({"tid": tid, "idxs": {"x": [tid]}, "vals": {"x": []}}),
        st.just({"tid": tid, "idxs": {"y": [tid]}, "vals": {"y": ["a"]}}),
        st.just({"tid": tid, "idxs": [], "vals": {}}),
        _values,
        _big,
    )


@st.composite
def job_docs(draw: st.DrawFn) -> dict[str, Any]:
    """One job document that hyperfleet may meet in a shared database: mostly hyperopt's
    shape with one or more fields missing, ill-typed, odd, huge or deeply nested."""
    if draw(st.integers(0, 9)) == 0:  # now and then a usable trial of a foreign experiment
        tid = draw(st.integers(10_000, 2**40))
        misc = {"tid": tid, "cmd": None, "idxs": {"x": [tid]}, "vals": {"x": [0.25]}}
        foreign = {"exp_key": "foreign", "space": SPACE, "owner": None, "misc": misc}
        return {"tid": tid, "state": 0, "result": {"status": "new"}, **foreign}
    tid = draw(st.one_of(st.integers(10_000, 2**62), _values))
    doc: dict[str, Any] = {
        "tid": tid,
        "state": draw(
            st.one_of(st.sampled_from([0, 0, 1, 2, 3, 4, "0", "2", 2.0, -1, 99, True]), _values)
        ),
        "exp_key": draw(
            st.one_of(st.sampled_from([KEY, KEY, OTHER_OWN, "foreign", None]), _values)
        ),
        "space": draw(st.one_of(st.sampled_from([SPACE, "not-installed", None]), _values)),
        "spec": draw(st.one_of(st.none(), _values, _big)),
        "result": draw(
            st.one_of(
                st.sampled_from(
                    [{"status": "new"}, {"status": "ok", "loss": -1e12}, {"status": "ok"}]
                ),
                st.fixed_dictionaries({"status": _values, "loss": _values}),
                _values,
            )
        ),
        "misc": draw(_misc(tid)),
        "owner": draw(st.one_of(st.none(), st.none(), _values)),
        "attempt": draw(st.one_of(st.integers(0, 3), _values)),
        "version": draw(st.one_of(st.integers(0, 3), _values)),
    }
    for name in draw(st.sets(st.sampled_from(sorted(doc)), max_size=4)):
        doc[name] = DROP
    if draw(st.integers(0, 9)) == 0:
        doc["payload"] = draw(_big)
    doc = {k: v for k, v in doc.items() if v is not DROP}
    if doc.get("exp_key") == KEY and rules.trial_problem(doc, space=SPACE) is None:
        del doc["misc"]  # in the search's own key, only unusable documents (else it is a trial)
    return doc


def hostile_rows() -> dict[str, list[dict[str, Any]]]:
    """Rows by collection that another program may leave in a shared database and that
    hypothesis does not draw (issue 22): a usable NEW trial of a foreign experiment under a
    1 MB exp key (unpinned workers run it, and logged the whole key), an experiment and a
    worker row named with a megabyte, and timestamps in the year 9999 on a foreign RUNNING
    trial (its lease never expires), on a malformed trial of the search's key and on a worker
    row (which once counted as alive for ever)."""
    tid = 2**40

    def misc(t: int) -> dict[str, Any]:
        return {"tid": t, "cmd": None, "idxs": {"x": [t]}, "vals": {"x": [0.25]}}

    new = {"state": 0, "space": SPACE, "owner": None, "result": {"status": "new"}}
    times = {"book_time": FAR, "refresh_time": FAR, "lease_expires": FAR}
    return {
        "jobs": [
            {"tid": tid, "exp_key": BIG_KEY, "misc": misc(tid), **new},
            {"tid": tid + 1, "exp_key": "foreign", "misc": misc(tid + 1), **new, **times}
            | {"state": 1, "owner": "gone:1:x"},
            {"tid": tid + 2, "exp_key": KEY, "state": 1, "owner": "gone:1:x", **times},
        ],
        "experiments": [{"_id": "E" * 1_000_000, "space": "S" * 1_000_000, "status": "running"}],
        "workers": [
            {
                "_id": "W" * 1_000_000,
                "id": "W" * 1_000_000,
                "host": "H" * 1_000_000,
                "state": "running",
                "exp_key": BIG_KEY,
                "current_tid": "T" * 1_000_000,
                "last_seen": FAR,
            }
        ],
    }


def assert_bounded(text: str, what: Any) -> None:
    """No line of ``text`` (a command's output, a log) is longer than ``LONGEST_LINE``."""
    longest = max((len(line) for line in text.splitlines()), default=0)
    assert longest <= LONGEST_LINE, (what, longest, text[:300])


def draw_documents(n: int) -> list[dict[str, Any]]:
    """``n`` documents, the same ones on every run (hypothesis, derandomized)."""
    docs: list[dict[str, Any]] = []

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(job_docs())
    def collect(doc: dict[str, Any]) -> None:
        docs.append(doc)

    collect()
    return docs[:n]


def inspect_cli(*args: str) -> None:
    """Run one inspection command in this process (the real click command, no interpreter
    start-up): it must exit 0 without an exception."""
    from click.testing import CliRunner

    from coordinator.cli import main

    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0 and result.exception is None, (args, result.output[-2000:])
    assert "Traceback" not in result.output, args
    assert_bounded(result.output, args)


def fuzz_search(server, db_name: str, tmp_path: Path, n_docs: int, max_evals: int) -> int:
    """Run the search, insert ``n_docs`` fuzzed documents while it runs, check everything;
    returns how many documents were inserted."""
    store = connect(server.uri, db_name)
    store.create_experiment({"_id": OTHER_OWN, "space": SPACE, "status": "running"})
    # drawn before any process starts: drawing takes 1.5 s on a quiet machine but 27 s at load
    # 8, and a search that ran meanwhile could end before the wait below began (issue 22,
    # item 14: "timed out after 90 s waiting for the search's first running trial")
    docs = draw_documents(n_docs)
    assert len(docs) == n_docs
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    extra = [(), (), ("--trust-pickled",)]
    workers = [
        start_worker(server.uri, db_name, "--heartbeat", "0.5", "--lease", "3", *e, log=log)
        for e, log in zip(extra, logs, strict=True)
    ]
    common = ["--mongo", server.uri, "--db", db_name]
    search_log = tmp_path / "search.log"
    search = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "search", SPACE, *common, "--exp-key", KEY]
        + ["--max-evals", str(max_evals), "--set", "sleep=0.5", "--seed", "3", "--no-progress"],
        stdout=open(search_log, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env=cli_env(),
    )
    started = [TrialState.RUNNING, TrialState.DONE, TrialState.ERROR]
    try:
        # insert from the search's first trial on: its 0.5 s trials keep the 3 workers busy for
        # max_evals / 6 s more (2.7 s for 16), so the documents land while it runs. The signal
        # is "a trial of the search has started" (running or since finished), which a busy
        # test process cannot miss; "one is running now" can be missed for good by a slow poll
        wait_for(
            lambda: store.count(KEY, started) > 0, 90, what="the search's first trial to start"
        )
        for collection, rows in hostile_rows().items():
            insert_raw_rows(store, collection, rows)
        batch = max(1, len(docs) // 10)
        for i in range(0, len(docs), batch):
            insert_raw_documents(store, [dict(d) for d in docs[i : i + batch]])
            time.sleep(0.1)
        assert search.wait(120) == 0, search_log.read_text()[-3000:]
        assert all(w.poll() is None for w in workers), "a worker exited"
        own = [d for d in store.trials(KEY) if rules.trial_problem(d, space=SPACE) is None]
        done = [d for d in own if d["state"] == TrialState.DONE]
        assert len(done) == max_evals, [d["state"] for d in own]
        assert len({d["tid"] for d in done}) == max_evals
        exp = store.get_experiment(KEY)
        assert exp["status"] == "done" and exp["best_loss"] >= 0
        inspect_cli("status", *common)
        malformed = next(d for d in store.trials(KEY) if rules.trial_problem(d) is not None)
        for key in (KEY, OTHER_OWN):
            inspect_cli("status", *common, "--exp-key", key)
            inspect_cli("top", *common, "--exp-key", key, "--all-states")
            inspect_cli("top", *common, "--exp-key", key, "--all-states", "--by", "state")
            inspect_cli("export", *common, "--exp-key", key, "--format", "json")
            inspect_cli("plot", *common, "--exp-key", key, "-o", str(tmp_path / key))
        inspect_cli("show", *common, "--exp-key", KEY, str(done[0]["tid"]))
        if isinstance(malformed.get("tid"), int) and abs(malformed["tid"]) < 2**62:
            inspect_cli("show", *common, "--exp-key", KEY, str(malformed["tid"]))
        status = hyperfleet("status", *common, "--exp-key", KEY)  # once as its own process
        assert f"{max_evals}/{max_evals} finished" in status.stdout, status.stdout
        assert "Traceback" not in status.stderr
        everything = hyperfleet("status", *common)  # every experiment, the 1 MB ones too
        assert (
            everything.returncode == 0 and "K" * 80 + "…(1000000 characters)" in everything.stdout
        )
        assert_bounded(everything.stdout + everything.stderr, "status")
        assert len(everything.stdout) < 100_000, len(everything.stdout)  # was 3 MB
        inspect_cli("workers", *common, "--all")
        wait_for(  # a worker ran the 1 MB key's trial (and logged it)
            lambda: store.count(BIG_KEY, [TrialState.DONE]) == 1, 60, what="the 1 MB key's trial"
        )
        top = hyperfleet("top", *common, "--exp-key", KEY, "--all-states", "-n", "1000").stdout
        assert "-1e+12" not in top and "malformed" in top
    finally:
        stop_all([search, *workers])
    for log in [*logs, search_log]:
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
        assert_bounded(log.read_text(), log)  # the 1 MB key's trial was logged whole
    return len(docs)


def test_fuzzed_documents_never_stall_or_crash_a_search(server, db_name, tmp_path) -> None:
    """Default tier: 200 documents while a 16-trial search runs."""
    assert fuzz_search(server, db_name, tmp_path, n_docs=200, max_evals=16) == 200


@pytest.mark.slow
def test_fuzzed_documents_long(server, db_name, tmp_path) -> None:
    """Slow tier: 1,000 documents while a 60-trial search runs."""
    assert fuzz_search(server, db_name, tmp_path, n_docs=1000, max_evals=60) == 1000
