"""One junk document must never crash an inspection command or a dashboard page: a worker row
with a string/int ``last_seen``, an experiment with an ObjectId ``_id`` and a null space, a job
with a list ``tid``, one with 100 000 ``misc`` values, one DONE job whose every field has the
wrong type, and out-of-range trial ids in dashboard URLs and forms."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from coordinator.dashboard.app import create_app
from coordinator.states import TrialState
from coordinator.store import TrialStore
from tests.conftest import hyperfleet
from tests.dashboard.conftest import make_experiment, trial_doc
from tests.raw_store import insert_raw_documents, insert_raw_rows

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

K = "junk-exp"
HUGE = 100_000
BIG_TID = "99999999999999999999"


def _junk_store(store: TrialStore) -> None:
    make_experiment(store, [trial_doc(1, TrialState.DONE, K), trial_doc(2, TrialState.NEW, K)], K)
    insert_raw_rows(
        store,
        "workers",
        [
            {"_id": "g1", "state": "alive", "last_seen": "now"},
            {"_id": "g2", "state": "alive", "last_seen": 5, "current_tid": [1, 2], "pid": "x"},
        ],
    )
    insert_raw_rows(store, "experiments", [{"space": None}])  # an ObjectId _id
    list_tid = trial_doc(3, TrialState.DONE, K)
    list_tid["tid"] = [1, 2]
    huge = trial_doc(4, TrialState.NEW, K)
    huge["misc"] = {"tid": 4, "cmd": None, "idxs": {"x": [4] * HUGE}, "vals": {"x": [0.5] * HUGE}}
    wrong = trial_doc(
        5,
        TrialState.DONE,
        K,
        timing="x",
        worker="garbage",
        book_time="yesterday",
        ended=5,
        duration_s="slow",
        refresh_time=[1],
        epochs="many",
        attempt_history="none",
        error="boom",
    )
    insert_raw_documents(store, [list_tid, huge, wrong])


def _ok(proc) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    assert len(out) < 50_000, "output must not dump the junk"
    return out


@pytest.fixture
def junk(store: TrialStore):
    _junk_store(store)
    yield store
    store.drop_database()


def test_cli_inspection_survives_junk(junk: TrialStore, server, db_name, tmp_path: Path) -> None:
    db = ["--mongo", server.uri, "--db", db_name]
    out = _ok(hyperfleet("status", *db))
    assert K in out
    assert hyperfleet("status", *db).returncode == 0
    for args in (["workers"], ["workers", "--all"]):
        proc = hyperfleet(*args, *db)
        out = _ok(proc)
        assert proc.returncode == 0 and "g1" in out and "g2" in out
    proc = hyperfleet("top", *db, "--exp-key", "nope")
    out = _ok(proc)
    assert proc.returncode != 0 and "no experiment 'nope'" in out
    for extra in ([], ["--all-states"]):
        proc = hyperfleet("top", *db, "--exp-key", K, *extra)
        assert proc.returncode == 0, _ok(proc)
        _ok(proc)
    proc = hyperfleet("top", *db, "--exp-key", K, "--all-states", "-n", "50")
    assert "malformed" in _ok(proc)
    for fmt in ("csv", "json"):
        proc = hyperfleet("export", *db, "--exp-key", K, "--format", fmt)
        assert proc.returncode == 0, _ok(proc)
        _ok(proc)
    for tid in ("1", "2", "4", "5"):
        proc = hyperfleet("show", *db, "--exp-key", K, tid)
        assert proc.returncode == 0, _ok(proc)
        _ok(proc)
    assert "malformed" in hyperfleet("show", *db, "--exp-key", K, "4").stdout
    proc = hyperfleet("plot", *db, "--exp-key", K, "-o", str(tmp_path / "plots"))
    assert proc.returncode == 0, _ok(proc)
    _ok(proc)


def test_dashboard_survives_junk(junk: TrialStore) -> None:
    app = create_app(junk, safe_uri="mongodb://127.0.0.1/", min_interval_s=0.0, allow_actions=True)
    c = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
    home = c.get("/")
    assert home.status_code == 200 and K in home.text
    assert c.get("/exp", params={"key": K}).status_code == 200
    unknown = c.get("/exp", params={"key": "unknown"})
    assert unknown.status_code == 404 and "unknown" in unknown.text
    assert c.get("/api/trials", params={"key": K}).status_code == 200
    assert c.get("/workers").status_code == 200
    for tid in (1, 2, 4, 5):
        assert c.get("/trial", params={"key": K, "tid": tid}).status_code == 200, tid
    big = c.get("/trial", params={"key": K, "tid": BIG_TID})
    assert big.status_code in (400, 404) and "trial id" in big.text
    assert c.get("/model", params={"key": K, "tid": BIG_TID}).status_code in (400, 404)
    token = c.get("/exp", params={"key": K}).text.split('name="token" value="')[1].split('"')[0]
    post = c.post("/actions/requeue", data={"key": K, "tid": BIG_TID, "token": token})
    assert post.status_code in (400, 404) and "trial id" in post.text
