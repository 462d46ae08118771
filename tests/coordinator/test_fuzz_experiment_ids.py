"""Issue 24, item 3 (the fuzz suite's rule for junk trials, applied to experiment documents):
experiment documents of another program's, with an ``_id`` of any BSON type and any other
fields, never break a dashboard page or an inspection command. One document whose ``_id`` was a
dict made ``/``, ``/workers`` and every unknown-key page answer 500 and ``hyperfleet status``
print a ``TypeError`` traceback (``inspect.all_experiments`` built a set of ``_id``s)."""

from __future__ import annotations

import datetime as dt
import uuid
import warnings
from typing import Any

import bson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator import inspect
from coordinator.dashboard.app import create_app
from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore
from tests.conftest import hyperfleet
from tests.dashboard.conftest import make_experiment, trial_doc
from tests.raw_store import insert_raw_rows

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

KEY = "own-exp"

#: ``_id`` values of every BSON type the server stores (an array is no valid ``_id``)
_scalar_ids = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    st.binary(max_size=8).map(bson.Binary),
    st.just(None),
    st.builds(bson.ObjectId),
    st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2200, 1, 1)).map(
        lambda d: d.replace(microsecond=0)
    ),
    st.just(uuid.UUID(int=7)).map(lambda u: bson.Binary.from_uuid(u)),
    st.sampled_from(["<script>x</script>", "", "é\u202e\x00", "x" * 5000]),
)
_ids = st.one_of(
    _scalar_ids,
    st.dictionaries(st.text("abc$._", min_size=1, max_size=4), _scalar_ids, max_size=3),
)
_fields = st.dictionaries(
    st.sampled_from(["status", "space", "max_evals", "created", "settings", "algo", "version"]),
    st.one_of(_scalar_ids, st.lists(_scalar_ids, max_size=3)),
    max_size=5,
)


def _insert_each(store: TrialStore, docs: list[dict[str, Any]]) -> int:
    """Insert each document alone (a duplicate ``_id`` is skipped); how many went in."""
    n = 0
    for doc in docs:
        try:
            insert_raw_rows(store, "experiments", [doc])
            n += 1
        except Exception:  # noqa: BLE001 - a duplicate or refused _id: not this test's subject
            pass
    return n


def _check_pages(store: TrialStore) -> None:
    app = create_app(store, safe_uri="mongodb://127.0.0.1/", min_interval_s=0.0)
    c = TestClient(app, raise_server_exceptions=False)
    for path, status in [
        ("/", 200),
        ("/workers", 200),
        (f"/exp?key={KEY}", 200),
        ("/exp?key=no-such-experiment", 404),
        ("/api/trials?key=no-such-experiment", 404),
        ("/trial?key=no-such-experiment&tid=1", 404),
    ]:
        r = c.get(path)
        assert r.status_code == status, (path, r.status_code, r.text[:300])
        assert "Internal error" not in r.text and "Traceback" not in r.text, path


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    docs=st.lists(
        st.fixed_dictionaries({"_id": _ids}, optional={}).flatmap(
            lambda d: _fields.map(lambda f: {**f, **d})
        ),
        min_size=1,
        max_size=8,
    )
)
def test_junk_experiment_documents_never_break_a_page(
    store: TrialStore, docs: list[dict[str, Any]]
) -> None:
    store.drop_database()
    make_experiment(store, [trial_doc(0, TrialState.DONE, exp_key=KEY)], exp_key=KEY)
    _insert_each(store, docs)
    assert inspect.all_experiments(store)  # type: ignore[arg-type]
    _check_pages(store)


def test_a_dict_id_breaks_neither_status_nor_the_pages(
    server: EmbeddedServer, store: TrialStore, db_name: str
) -> None:
    """The case the issue found, through the real CLI as well (no traceback, exit 0)."""
    make_experiment(store, [trial_doc(0, TrialState.DONE, exp_key=KEY)], exp_key=KEY)
    insert_raw_rows(
        store,
        "experiments",
        [
            {"_id": {"a": 1}, "status": "running"},
            {"_id": 12, "status": ["x"]},
            {"_id": None},
            {"_id": 1.5, "created": "yesterday"},
        ],
    )
    _check_pages(store)
    mongo = server.uri
    for args in (
        ("status",),
        ("workers",),
        ("top", "--exp-key", KEY),
        ("status", "--exp-key", "nope"),
    ):
        proc = hyperfleet(*args, "--mongo", mongo, "--db", db_name, timeout=60)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
        if args[-1] != "nope":
            assert proc.returncode == 0, (args, proc.stderr)
        else:
            assert proc.returncode != 0 and "no experiment 'nope'" in proc.stderr
    status = hyperfleet("status", "--mongo", mongo, "--db", db_name, timeout=60)
    assert KEY in status.stdout and "{'a': 1}" in status.stdout
