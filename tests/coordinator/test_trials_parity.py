"""Parity with hyperopt's ``Trials``: each scenario runs against hyperopt's in-memory
``Trials()`` and against ``HyperfleetTrials`` on the embedded server (a real SecantusDB over
TCP), and both must show the same observable results. A hyperopt release that changes what a
documented ``Trials`` method returns makes one of these fail.

What is compared is what a hyperopt user reads: ``len``, ``tids``, ``trials`` (hyperopt's
document keys; the database adds its own, such as ``_id`` and ``mtime``, and stores tuples as
lists), ``specs``, ``results``, ``miscs``, ``losses()``, ``statuses()``, ``best_trial``,
``argmin``, ``average_best_error()``, counts, attachments. The deliberate differences
(docs/hyperopt-compat.md) are asserted as such in the last tests.

``fmin`` on ``HyperfleetTrials`` needs a worker: those tests start a real ``hyperfleet worker
--trust-pickled`` process (hyperopt has no in-process evaluation for asynchronous trials), on the
test's own database so that trial ids start at 0 as in memory.
"""

from __future__ import annotations

import functools
import math
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hyperopt import STATUS_FAIL, STATUS_OK, Trials, fmin, hp, rand, tpe
from hyperopt.base import (
    JOB_STATE_DONE,
    JOB_STATE_ERROR,
    JOB_STATE_NEW,
    JOB_STATE_RUNNING,
    TRIAL_KEYS,
    Domain,
)
from hyperopt.fmin import generate_trials_to_calculate, pickler

from coordinator import fleet_tpe
from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore
from coordinator.trials import HyperfleetTrials, one_seed_per_id
from tests.conftest import start_worker, stop_all

Observed = dict[str, Any]
MakeTrials = Callable[..., Trials]


def _plain(value: Any) -> Any:
    """``value`` as it reads back from BSON: tuples become lists (hyperopt's own
    ``MongoTrials`` returns them so too); NaN as ``"nan"``."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"  # so that equal results compare equal
    return value


def _doc(tid: Any, state: int = JOB_STATE_DONE, exp_key: str | None = None, **result: Any) -> dict:
    """A trial document the way hyperopt's own tests build them (``create_fake_trial``)."""
    return {
        "tid": tid,
        "spec": {"a": 1},
        "result": result or {"status": "new"},
        "misc": {"tid": tid, "cmd": ("some cmd",), "idxs": {"z": [tid]}, "vals": {"z": [tid]}},
        "state": state,
        "owner": None,
        "version": 0,
        "book_time": None,
        "refresh_time": None,
        "exp_key": exp_key,
        "extra": "extra",
    }


def _outcome(read: Callable[[], Any]) -> Any:
    """What ``read()`` returns, or the name of the exception it raises (part of the behaviour)."""
    try:
        return _plain(read())
    except Exception as e:  # noqa: BLE001  (compared, never swallowed: both sides must agree)
        return type(e).__name__


def _observe(trials: Trials) -> Observed:
    """Everything a hyperopt user can read from a refreshed ``trials``."""
    return {
        "len": len(trials),
        "tids": trials.tids,
        "trials": [_plain({k: t[k] for k in (*TRIAL_KEYS, "extra") if k in t}) for t in trials],
        "specs": _plain(trials.specs),
        "results": _plain(trials.results),
        "miscs": _plain(trials.miscs),
        "losses": _plain(trials.losses()),
        "statuses": trials.statuses(),
        "idxs_vals": _outcome(lambda: trials.idxs_vals),
        "best_trial": _outcome(lambda: {k: trials.best_trial[k] for k in TRIAL_KEYS}),
        "argmin": _outcome(lambda: trials.argmin),
        "average_best_error": _outcome(trials.average_best_error),
    }


@pytest.fixture
def both(store: TrialStore) -> Iterator[Callable[[Callable[[MakeTrials], Any]], Any]]:
    """Run a scenario with in-memory trials and with HyperfleetTrials; assert equal results
    and hand them back."""

    def memory(exp_key: str | None = None) -> Trials:
        return Trials(exp_key=exp_key)

    def fleet(exp_key: str | None = None) -> Trials:
        return HyperfleetTrials(store, exp_key=exp_key)

    def run(scenario: Callable[[MakeTrials], Any]) -> Any:
        expected = scenario(memory)
        got = scenario(fleet)
        assert got == expected
        return got

    yield run


def test_insert_new_trial_docs_and_refresh(both) -> None:
    def scenario(make: MakeTrials) -> list[Observed | int]:
        trials = make()
        out: list[Observed | int] = [len(trials)]
        trials.insert_trial_doc(_doc(0, JOB_STATE_NEW))
        out.append(len(trials))  # not before a refresh
        trials.refresh()
        out.append(_observe(trials))
        docs = trials.new_trial_docs(
            [1, 2],
            [{"a": 1}, {"a": 2}],
            [{"status": "new"}, {"status": "new"}],
            [{"tid": t, "idxs": {}, "vals": {}, "cmd": None} for t in (1, 2)],
        )
        trials.insert_trial_docs(docs)
        trials.insert_trial_docs([_doc(3, loss=0.5, status=STATUS_OK)])
        out.append(len(trials))
        trials.refresh()
        out.append(_observe(trials))
        return out

    out = both(scenario)
    assert out[0] == out[1] == 0 and out[2]["len"] == 1 and out[-1]["tids"] == [0, 1, 2, 3]


def test_new_trial_ids(both) -> None:
    def scenario(make: MakeTrials) -> list[list[int]]:
        trials = make()
        return [trials.new_trial_ids(3), trials.new_trial_ids(2)]

    assert both(scenario) == [[0, 1, 2], [3, 4]]


def test_string_and_mixed_tids(both) -> None:
    # hyperopt's own test_insert_sync: tids "a", 5, 4, 9, then "id0", "id1"
    def scenario(make: MakeTrials) -> list[Any]:
        trials = make()
        trials.insert_trial_doc(_doc("a", JOB_STATE_NEW))
        trials.insert_trial_doc(_doc(4, JOB_STATE_NEW))
        trials.insert_trial_docs([_doc(5, JOB_STATE_NEW), _doc(9, JOB_STATE_NEW)])
        trials.refresh()
        first = len(trials)
        trials.insert_trial_docs([_doc("id0", JOB_STATE_NEW), _doc("id1", JOB_STATE_NEW)])
        trials.refresh()
        return [first, len(trials), len(trials.specs), len(trials.results), len(trials.miscs)]

    assert both(scenario) == [4, 6, 6, 6, 6]


def test_losses_statuses_best_trial_argmin_average_best_error(both) -> None:
    def scenario(make: MakeTrials) -> list[Observed]:
        trials = make()
        trials.insert_trial_doc(_doc(0, loss=math.nan, status=STATUS_OK))
        trials.refresh()
        out = [_observe(trials)]  # only a NaN loss: best_trial raises AllTrialsFailed
        trials.insert_trial_docs(
            [
                _doc(1, loss=1.0, status=STATUS_OK),
                _doc(2, status=STATUS_FAIL, failure="boom"),
                _doc(3, loss=0.5, status=STATUS_OK, true_loss=0.4),
                _doc(4, loss=0.5, status=STATUS_OK),  # a tie: the first (lowest tid) wins
                _doc(5, JOB_STATE_NEW),
            ]
        )
        trials.refresh()
        out.append(_observe(trials))
        return out

    first, second = both(scenario)
    assert first["best_trial"] == first["argmin"] == "AllTrialsFailed"
    assert second["best_trial"]["tid"] == 3 and second["argmin"] == {"z": 3}
    assert second["statuses"] == ["ok", "ok", "fail", "ok", "ok", "new"]
    assert second["average_best_error"] == "nan"  # hyperopt's: the NaN loss of trial 0 counts


def test_count_by_state_synced_and_unsynced(both) -> None:
    states = [JOB_STATE_NEW, JOB_STATE_RUNNING, JOB_STATE_DONE, JOB_STATE_ERROR]

    def counts(trials: Trials) -> list[int]:
        out = [trials.count_by_state_synced(s) for s in states]
        out += [trials.count_by_state_unsynced(s) for s in states]
        out.append(trials.count_by_state_unsynced([JOB_STATE_NEW, JOB_STATE_RUNNING]))
        out.append(trials.count_by_state_synced([JOB_STATE_DONE, JOB_STATE_ERROR]))
        return out

    def scenario(make: MakeTrials) -> list[Any]:
        trials = make()
        trials.insert_trial_docs(
            [
                _doc(0, JOB_STATE_NEW),
                _doc(1, JOB_STATE_RUNNING),
                _doc(2, loss=1.0, status=STATUS_OK),
                _doc(3, JOB_STATE_ERROR, status=STATUS_FAIL),
            ]
        )
        before = counts(trials)  # unsynced counts see the inserts, synced ones do not
        trials.refresh()
        return [before, counts(trials), len(trials)]

    before, after, n = both(scenario)
    assert before == [0, 0, 0, 0, 1, 1, 1, 1, 2, 0]
    assert after == [1, 1, 1, 0, 1, 1, 1, 1, 2, 1] and n == 3  # ERROR is not in trials


def test_attachments_and_trial_attachments(both) -> None:
    def scenario(make: MakeTrials) -> list[Any]:
        trials = make()
        out: list[Any] = ["aname" in trials.attachments]
        trials.attachments["aname"] = b"one"
        trials.attachments["aname"] = b"two"  # replaced
        trials.attachments["other"] = b"three"
        out += [trials.attachments["aname"], "aname" in trials.attachments]
        out.append(sorted(trials.attachments))
        del trials.attachments["other"]
        out.append("other" in trials.attachments)
        with pytest.raises(KeyError):
            trials.attachments["missing"]

        trials.insert_trial_doc(_doc(0, loss=1.0, status=STATUS_OK))
        trials.refresh()
        per_trial = trials.trial_attachments(trials.trials[0])
        out.append("model" in per_trial)
        per_trial["model"] = b"weights"
        out += ["model" in per_trial, per_trial["model"]]
        with pytest.raises(KeyError):
            per_trial["missing"]
        trials.refresh()
        out.append(trials.trial_attachments(trials.trials[0])["model"])
        return out

    assert both(scenario) == [
        False,
        b"two",
        True,
        ["aname", "other"],
        False,
        False,
        True,
        b"weights",
        b"weights",
    ]


def test_delete_all(both) -> None:
    def scenario(make: MakeTrials) -> list[Any]:
        trials = make()
        trials.insert_trial_docs([_doc(0, loss=1.0, status=STATUS_OK), _doc(1, JOB_STATE_NEW)])
        trials.attachments["aname"] = b"data"
        trials.refresh()
        trials.trial_attachments(trials.trials[0])["model"] = b"weights"
        trials.delete_all()
        return [
            len(trials),
            trials.count_by_state_unsynced(JOB_STATE_DONE),
            "aname" in trials.attachments,
            trials.losses(),
        ]

    assert both(scenario) == [0, 0, False, []]


def test_view(both) -> None:
    def scenario(make: MakeTrials) -> list[Any]:
        everything = make()
        a = everything.view(exp_key="a")
        a.insert_trial_docs([_doc(0, exp_key="a", loss=1.0, status=STATUS_OK)])
        a.insert_trial_doc(_doc(1, exp_key="a", loss=2.0, status=STATUS_OK))
        b = everything.view(exp_key="b")
        b.insert_trial_doc(_doc(2, exp_key="b", loss=0.5, status=STATUS_OK))
        for t in (everything, a, b):
            t.refresh()
        return [len(everything), a.tids, b.tids, a.losses(), a.view("b").tids]

    assert both(scenario) == [3, [0, 1], [2], [1.0, 2.0], [2]]


# -- fmin: HyperfleetTrials' trials are evaluated by a real worker process ---------------------


@pytest.fixture
def pickled_worker(server: EmbeddedServer, db_name: str) -> Iterator[subprocess.Popen[str]]:
    """A real ``hyperfleet worker --trust-pickled`` on the test's database (any exp key)."""
    worker = start_worker(
        server.uri, db_name, "--trust-pickled", "--no-isolate", "--idle-timeout", "120"
    )
    yield worker
    stop_all([worker])


SPACE = hp.uniform("x", -1, 1)


def _fmin(trials: Trials, **kwargs: Any) -> dict[str, float]:
    fn = lambda x: (x - 0.3) ** 2  # noqa: E731  (pickled by value for the worker)
    kwargs.setdefault("algo", rand.suggest)
    return fmin(
        fn, SPACE, trials=trials, rstate=np.random.default_rng(7), show_progressbar=False, **kwargs
    )


def _fleet_trials(store: TrialStore, exp_key: str) -> HyperfleetTrials:
    trials = HyperfleetTrials(store, exp_key=exp_key)
    # the worker may reserve a warm-start trial before fmin stores its pickled Domain: store
    # the same Domain first, so whichever it reads is the right one
    domain = Domain(lambda x: (x - 0.3) ** 2, SPACE)
    trials.attachments["FMinIter_Domain"] = pickler.dumps(domain)
    return trials


def test_fmin_with_trials_ignores_points_to_evaluate(store, pickled_worker) -> None:
    """hyperopt documents ``points_to_evaluate`` as working only with ``trials=None``: given
    trials, ``fmin`` hands over to ``trials.fmin``, which drops the points. Same here."""
    point = [{"x": 0.123}]
    memory = Trials()
    fleet = _fleet_trials(store, "points")
    best_memory = _fmin(memory, max_evals=3, points_to_evaluate=point)
    best_fleet = _fmin(fleet, max_evals=3, points_to_evaluate=point)
    assert best_fleet == best_memory
    assert fleet.vals == memory.vals and len(fleet.vals["x"]) == 3
    assert 0.123 not in fleet.vals["x"]
    assert fleet.losses() == memory.losses() and fleet.tids == memory.tids == [0, 1, 2]


def test_generate_trials_to_calculate_warm_start(store, pickled_worker) -> None:
    points = [{"x": 0.25}, {"x": -0.5}]
    memory = generate_trials_to_calculate(points)
    warm = generate_trials_to_calculate(points)
    warm.refresh()
    fleet = _fleet_trials(store, "warm")
    fleet.insert_trial_docs([{**doc, "exp_key": "warm"} for doc in warm.trials])

    # fmin counts the trials of its last refresh: the points come on top of max_evals
    best_memory = _fmin(memory, max_evals=4)
    best_fleet = _fmin(fleet, max_evals=4)
    assert fleet.vals["x"][:2] == [0.25, -0.5]
    assert fleet.vals == memory.vals and fleet.losses() == memory.losses()
    assert fleet.tids == memory.tids == [0, 1, 2, 3, 4, 5]  # new ids above the warm start's
    assert best_fleet == best_memory and fleet.argmin == memory.argmin


ALGOS = {
    "rand": rand.suggest,
    "tpe": tpe.suggest,  # its random start-up: 20 trials
    "fleet-tpe": functools.partial(fleet_tpe.suggest, liar="worst"),
}


@pytest.mark.parametrize("name", list(ALGOS))
def test_seeded_search_draws_the_same_points_however_fmin_batches(
    store, pickled_worker, name: str
) -> None:
    """CI failure (stop 9): with a queue of several trials fmin may ask the algorithm for a
    batch of ids with one seed, so a seeded search drew different points depending on the
    workers' pace. Each id now gets the seed fmin would have drawn for it (random search, and
    TPE's random start-up: 10 trials here)."""
    memory = Trials()
    fleet = _fleet_trials(store, f"batches-{name}")
    fleet.queue_len = 6  # batches of up to 6 ids
    _fmin(memory, max_evals=10, algo=ALGOS[name])
    _fmin(fleet, max_evals=10, algo=ALGOS[name])
    assert fleet.vals == memory.vals and fleet.tids == memory.tids


def test_each_id_of_a_batch_sees_the_earlier_ones_queued() -> None:
    """As consecutive fmin calls would: the second id of a batch is suggested with the first
    one among the trials (queued), the third with both; fmin's rstate gives their seeds."""
    seen: list[tuple[int, list[Any], int]] = []

    def recording(new_ids, domain, trials, seed):
        seen.append((len(trials.trials), list(trials.tids), seed))
        return rand.suggest(new_ids, domain, trials, seed)

    trials = Trials()
    domain = Domain(lambda x: x, SPACE)
    trials.insert_trial_docs(rand.suggest([0], domain, trials, 1))
    trials.refresh()
    rstate = np.random.default_rng(5)
    docs = one_seed_per_id(recording, rstate)([1, 2, 3], domain, trials, 42)
    assert [d["tid"] for d in docs] == [1, 2, 3]
    assert [(n, tids) for n, tids, _ in seen] == [(1, [0]), (2, [0, 1]), (3, [0, 1, 2])]
    again = np.random.default_rng(5)
    drawn = [int(again.integers(2**31 - 1)) for _ in range(2)]
    assert [s for _, _, s in seen] == [42, *drawn]
    assert len(trials.trials) == 1  # the real trials are untouched


# -- deliberate differences (docs/hyperopt-compat.md) ------------------------------------------


def test_difference_view_keeps_the_exp_key_as_in_mongotrials(store: TrialStore) -> None:
    """``view()`` without an exp key: in-memory ``Trials`` views every experiment, stock
    ``MongoTrials`` (and hyperfleet) the same experiment."""
    memory, fleet = Trials(exp_key="a"), HyperfleetTrials(store, exp_key="a")
    for trials in (memory, fleet):
        trials.view(exp_key="b").insert_trial_doc(_doc(1, JOB_STATE_NEW, exp_key="b"))
        trials.insert_trial_doc(_doc(0, JOB_STATE_NEW, exp_key="a"))
    assert memory.view().tids == [1, 0] and fleet.view().tids == [0]


def test_difference_cancelled_trials_stay_visible_as_in_mongotrials(store: TrialStore) -> None:
    """In-memory ``Trials`` hides CANCEL trials; stock ``MongoTrials`` (and hyperfleet, where
    ``hyperfleet cancel`` marks queued trials CANCEL) shows every trial but ERROR ones."""
    memory, fleet = Trials(), HyperfleetTrials(store)
    for trials in (memory, fleet):
        trials.insert_trial_docs([_doc(0, int(TrialState.CANCEL)), _doc(1, JOB_STATE_NEW)])
        trials.refresh()
    assert memory.tids == [1] and fleet.tids == [0, 1]
    assert memory.count_by_state_unsynced(4) == fleet.count_by_state_unsynced(4) == 1


def test_difference_trials_are_in_tid_order(store: TrialStore) -> None:
    """In-memory ``Trials`` keeps insertion order (stock ``MongoTrials``: ``_id`` order, about
    the same); hyperfleet orders by tid, numbers first, so every process sees one order."""
    memory, fleet = Trials(), HyperfleetTrials(store)
    for trials in (memory, fleet):
        trials.insert_trial_docs([_doc(t, JOB_STATE_NEW) for t in ("a", 5, 4)])
        trials.refresh()
    assert memory.tids == ["a", 5, 4] and fleet.tids == [4, 5, "a"]


def test_early_stop_fn_sees_trials_as_in_memory(store, pickled_worker) -> None:
    """hyperopt's own ``no_progress_loss`` reads the last trial's loss: the loop calls it once
    per ended trial with the trials ended so far, as in-memory fmin does (it crashed on a
    queued last trial, and was called before any trial ended)."""
    from hyperopt.early_stop import no_progress_loss

    memory, fleet = Trials(), _fleet_trials(store, "early")
    _fmin(memory, max_evals=200, early_stop_fn=no_progress_loss(3))
    _fmin(fleet, max_evals=200, early_stop_fn=no_progress_loss(3))
    stopped_at = len(memory.trials)
    assert stopped_at < 200
    # the same points up to the stop; trials already queued then still run (the queue is short)
    assert fleet.vals["x"][:stopped_at] == memory.vals["x"]
    assert stopped_at <= len(fleet.trials) <= stopped_at + 16
