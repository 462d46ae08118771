"""The fleet-aware TPE (coordinator/fleet_tpe.py) on hyperopt's in-memory ``Trials``.

No database here: the algorithm only reads trial documents, and in-memory ``Trials`` hold the same
documents (state, tid, misc, result) that HyperfleetTrials loads from MongoDB.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hyperopt import STATUS_FAIL, STATUS_OK, Trials, base, fmin, hp, rand, tpe

from coordinator import fleet_tpe

SPACE = {
    "x": hp.uniform("x", -5, 10),
    "y": hp.uniform("y", 0, 15),
    "kind": hp.choice("kind", [{"a": hp.loguniform("a", -5, 0)}, {"b": hp.uniform("b", 0, 1)}]),
}


def loss_of(p: dict[str, Any]) -> float:
    return (p["x"] - 1) ** 2 + (p["y"] - 2) ** 2 + (p["kind"].get("a", 1.0))


def make_trials(n_done: int, n_pending: int, n_failed: int = 0) -> tuple[base.Domain, Trials]:
    """``n_done`` finished trials (losses from :func:`loss_of`), then ``n_failed`` finished
    without a loss, then ``n_pending`` queued ones: all sampled at random."""
    domain = base.Domain(loss_of, SPACE)
    trials = Trials()
    n = n_done + n_failed + n_pending
    docs = rand.suggest(trials.new_trial_ids(n), domain, trials, 1234)
    trials.insert_trial_docs(docs)
    trials.refresh()
    for i, doc in enumerate(trials._dynamic_trials):
        if i < n_done:
            params = hyperopt_params(doc)
            doc["state"] = base.JOB_STATE_DONE
            doc["result"] = {"status": STATUS_OK, "loss": loss_of(params)}
        elif i < n_done + n_failed:
            doc["state"] = base.JOB_STATE_DONE
            doc["result"] = {"status": STATUS_FAIL}
        elif i % 2:
            doc["state"] = base.JOB_STATE_RUNNING
    trials.refresh()
    return domain, trials


def hyperopt_params(doc: dict[str, Any]) -> dict[str, Any]:
    from hyperopt import space_eval

    return space_eval(SPACE, base.spec_from_misc(doc["misc"]))


def points(docs: list[dict[str, Any]]) -> list[dict[str, list[Any]]]:
    return [doc["misc"]["vals"] for doc in docs]


@pytest.fixture
def tpe_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Records what fleet_tpe shows hyperopt's ``tpe.suggest``: the documents and the gamma."""
    calls: list[dict[str, Any]] = []
    real = tpe.suggest

    def spy(new_ids: list[int], domain: Any, trials: Any, seed: int, **kw: Any) -> Any:
        calls.append({"docs": list(trials.trials), "new_ids": list(new_ids), **kw})
        return real(new_ids, domain, trials, seed, **kw)

    monkeypatch.setattr(fleet_tpe.tpe, "suggest", spy)
    yield calls


def test_same_seed_same_trials_same_suggestions() -> None:
    domain, trials = make_trials(n_done=30, n_pending=6)
    ids = trials.new_trial_ids(4)
    first = fleet_tpe.suggest(ids, domain, trials, seed=7)
    again = fleet_tpe.suggest(ids, domain, trials, seed=7)
    other = fleet_tpe.suggest(ids, domain, trials, seed=8)
    assert points(first) == points(again)
    assert points(first) != points(other)
    assert [d["tid"] for d in first] == ids


@pytest.mark.parametrize("n_done", [5, 25])
def test_without_pending_trials_it_is_hyperopts_tpe(n_done: int) -> None:
    domain, trials = make_trials(n_done=n_done, n_pending=0)
    ids = trials.new_trial_ids(1)
    mine = fleet_tpe.suggest(ids, domain, trials, seed=11)
    stock = tpe.suggest(ids, domain, trials, 11)
    assert points(mine) == points(stock)


def test_startup_counts_results_not_queued_trials(tpe_calls: list[dict[str, Any]]) -> None:
    domain, trials = make_trials(n_done=0, n_pending=40)
    ids = trials.new_trial_ids(3)
    mine = fleet_tpe.suggest(ids, domain, trials, seed=3)
    assert points(mine) == points(rand.suggest(ids, domain, trials, 3))
    assert tpe_calls == []  # random start-up: the model was never asked

    domain, trials = make_trials(n_done=fleet_tpe.N_STARTUP_JOBS - 1, n_pending=40)
    fleet_tpe.suggest(trials.new_trial_ids(1), domain, trials, seed=3)
    assert tpe_calls == []


def test_cancelled_trials_are_neither_results_nor_pending(
    tpe_calls: list[dict[str, Any]],
) -> None:
    domain, trials = make_trials(n_done=fleet_tpe.N_STARTUP_JOBS, n_pending=3)
    cancelled = trials._dynamic_trials[:3]
    for doc in cancelled:
        doc["state"] = base.JOB_STATE_CANCEL
    trials.refresh()
    fleet_tpe.suggest(trials.new_trial_ids(1), domain, trials, seed=3)
    assert tpe_calls == []  # 17 results: still random start-up

    more = rand.suggest(trials.new_trial_ids(3), domain, trials, 4)
    for doc in more:
        doc["state"] = base.JOB_STATE_DONE
        doc["result"] = {"status": STATUS_OK, "loss": 1.0}
    trials.insert_trial_docs(more)
    trials.refresh()
    fleet_tpe.suggest(trials.new_trial_ids(1), domain, trials, seed=3)
    (call,) = tpe_calls
    shown = {d["tid"] for d in call["docs"]}
    assert not shown & {d["tid"] for d in cancelled}
    assert len(shown) == 23  # 17 + 3 results, 3 pending


def test_enough_results_use_the_model(tpe_calls: list[dict[str, Any]]) -> None:
    domain, trials = make_trials(n_done=fleet_tpe.N_STARTUP_JOBS, n_pending=40)
    ids = trials.new_trial_ids(2)
    mine = fleet_tpe.suggest(ids, domain, trials, seed=3)
    assert len(tpe_calls) == 2
    assert all(call["n_startup_jobs"] == 0 for call in tpe_calls)
    assert points(mine) != points(rand.suggest(ids, domain, trials, 3))


def test_min_results_ends_startup_early_with_pending_trials(
    tpe_calls: list[dict[str, Any]],
) -> None:
    domain, trials = make_trials(n_done=4, n_pending=30)
    fleet_tpe.suggest(trials.new_trial_ids(1), domain, trials, seed=3, min_results=5)
    assert tpe_calls == []  # 4 results < 5
    domain, trials = make_trials(n_done=5, n_pending=30)
    fleet_tpe.suggest(trials.new_trial_ids(1), domain, trials, seed=3, min_results=5)
    assert len(tpe_calls) == 1
    domain, trials = make_trials(n_done=5, n_pending=0)  # 5 + 0 < 20: still random
    fleet_tpe.suggest(trials.new_trial_ids(1), domain, trials, seed=3, min_results=5)
    assert len(tpe_calls) == 1


@pytest.mark.parametrize("liar", fleet_tpe.LIARS)
def test_each_liar_sets_pending_losses(liar: str, tpe_calls: list[dict[str, Any]]) -> None:
    domain, trials = make_trials(n_done=25, n_pending=10, n_failed=2)
    finished = [d["result"]["loss"] for d in trials.trials if d["result"].get("loss") is not None]
    expected = {
        "worst": max(finished),
        "mean": float(np.mean(finished)),
        "best": min(finished),
        "none": None,
    }[liar]
    fleet_tpe.suggest(trials.new_trial_ids(1), domain, trials, seed=5, liar=liar)
    (call,) = tpe_calls
    shown = {d["tid"]: d for d in call["docs"]}
    for doc in trials.trials:
        if fleet_tpe.is_pending(doc):
            if expected is None:
                assert doc["tid"] not in shown
            else:
                assert shown[doc["tid"]]["result"]["loss"] == pytest.approx(expected)
            assert "loss" not in doc["result"]  # the stored trial is untouched
        else:
            assert shown[doc["tid"]] is doc  # finished ones, failures included, as they are
    assert sum(1 for d in call["docs"] if d["result"].get("loss") is None) == 2  # failures: inf


@pytest.mark.parametrize(("on_results", "good"), [(False, 3), (True, 2)])
def test_good_group_size(on_results: bool, good: int, tpe_calls: list[dict[str, Any]]) -> None:
    """By default hyperopt's ceil(0.25 * sqrt(all shown)); on results: ceil(0.25 * sqrt(36))."""
    domain, trials = make_trials(n_done=36, n_pending=64)
    ids = trials.new_trial_ids(1)
    fleet_tpe.suggest(ids, domain, trials, seed=5, split_on_results=on_results)
    (call,) = tpe_calls
    assert len(call["docs"]) == 100
    assert math.ceil(call["gamma"] * math.sqrt(len(call["docs"]))) == good


def test_batch_sees_earlier_suggestions_as_pending(tpe_calls: list[dict[str, Any]]) -> None:
    domain, trials = make_trials(n_done=30, n_pending=4)
    ids = trials.new_trial_ids(8)
    batch = fleet_tpe.suggest(ids, domain, trials, seed=9, liar="worst")
    assert [d["tid"] for d in batch] == ids
    assert [len(call["docs"]) for call in tpe_calls] == [34 + k for k in range(8)]
    for k, call in enumerate(tpe_calls):
        shown = {d["tid"] for d in call["docs"]}
        assert set(ids[:k]) <= shown and not set(ids[k:]) & shown
    xy = {(p["x"][0], p["y"][0]) for p in points(batch)}
    assert len(xy) == len(batch)  # no two identical points in one batch


def test_unknown_liar_is_refused() -> None:
    domain, trials = make_trials(n_done=1, n_pending=0)
    with pytest.raises(ValueError, match="unknown liar 'often'"):
        fleet_tpe.suggest(trials.new_trial_ids(1), domain, trials, seed=1, liar="often")


def test_inside_hyperopt_fmin_with_batches() -> None:
    def run(seed: int) -> Trials:
        trials = Trials()
        fmin(
            loss_of,
            SPACE,
            algo=functools.partial(fleet_tpe.suggest, liar="worst"),
            max_evals=40,
            trials=trials,
            rstate=np.random.default_rng(seed),
            max_queue_len=4,
            show_progressbar=False,
        )
        return trials

    first, again = run(0), run(0)
    assert len(first.trials) == 40
    assert all(d["state"] == base.JOB_STATE_DONE for d in first.trials)
    assert first.losses() == again.losses()
    assert min(first.losses()) < 10
