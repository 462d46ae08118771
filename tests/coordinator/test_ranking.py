"""One ranking rule (:func:`coordinator.rules.ranked`): best first, pruned trials after every
full one, failed and malformed ones left out; and its running best
(:func:`coordinator.rules.best_so_far`). Every reader is checked against it: ``best_trial``,
``top``'s order, ``export``'s ``rank``, the plots and the dashboard's charts. Each case has a
pruned trial whose partial loss is lower than any finished trial's, which the old per-reader
rankings got wrong somewhere."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from coordinator import inspect, rules
from coordinator.dashboard.cache import TrialEntry, best_series, curve_tids
from coordinator.states import TrialState

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


def doc(tid: Any, loss: float | None, *, minute: int, state: int = TrialState.DONE, **extra: Any):
    """A trial document as a worker leaves it, ended ``minute`` minutes after T0."""
    result: dict[str, Any] = {"status": "ok", "loss": loss} if loss is not None else {}
    if state == TrialState.ERROR:
        result = {"status": "fail", "failure": "ValueError"}
    d: dict[str, Any] = {
        "tid": tid,
        "exp_key": "e",
        "state": int(state),
        "owner": None,
        "misc": {"tid": tid, "idxs": {"x": [tid]}, "vals": {"x": [0.5]}},
        "result": result or {"status": "new"},
        "params": {"x": 0.5},
        "book_time": T0 + dt.timedelta(minutes=minute - 1),
        "ended": T0 + dt.timedelta(minutes=minute),
        "epochs": [{"epoch": e + 1, "val_loss": (loss or 1.0) + 1 / (e + 1)} for e in range(3)],
    }
    d.update(extra)
    return d


def pruned_doc(tid: Any, loss: float, *, minute: int) -> dict[str, Any]:
    d = doc(tid, loss, minute=minute)
    d["result"]["pruned"] = {"epoch": 1, "rule": "asha", "metric": "val_loss"}
    d["epochs"] = d["epochs"][:1]
    return d


@pytest.fixture
def docs() -> list[dict[str, Any]]:
    """tid 0 is pruned with the lowest (partial) loss and ends first; 4 failed; 5 is malformed
    (misc.tid is not its tid) with a loss lower still; 1 and 3 tie on loss."""
    malformed = doc(5, 0.001, minute=6)
    malformed["misc"]["tid"] = 99
    return [
        pruned_doc(0, 0.01, minute=1),
        doc(1, 0.5, minute=2),
        doc(2, 0.9, minute=3),
        doc(3, 0.5, minute=4),
        doc(4, None, minute=5, state=TrialState.ERROR),
        malformed,
        doc(6, 0.2, minute=7),
        pruned_doc(7, 0.05, minute=8),
        doc(8, None, minute=9, state=TrialState.RUNNING),
    ]


def usable(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if rules.trial_problem(d) is None]


def test_ranked_puts_full_trials_first_and_leaves_failed_and_malformed_out(docs) -> None:
    order = [d["tid"] for d in rules.ranked(usable(docs))]
    assert order == [6, 1, 3, 2, 0, 7]
    # a lean read's ``problem`` (store.trial_outcomes) is enough to leave a document out
    lean = [{**d, "problem": rules.trial_problem(d)} for d in docs]
    assert [d["tid"] for d in rules.ranked(lean)] == order
    assert rules.best_trial(docs[:1]) is None  # a pruned trial alone is never the best
    assert rules.best_trial(lean)["tid"] == 6 == rules.ranked(lean)[0]["tid"]


def test_ranked_never_compares_tids_of_different_types() -> None:
    mixed = [doc("b", 0.3, minute=1), doc(2, 0.3, minute=2), doc("a", 0.3, minute=3)]
    assert [d["tid"] for d in rules.ranked(mixed)] == [2, "a", "b"]


def test_best_so_far_ignores_pruned_failed_and_malformed(docs) -> None:
    lean = [{**d, "problem": rules.trial_problem(d)} for d in docs]
    series = rules.best_so_far(lean)
    # the line starts at the first full trial (tid 1), not at pruned tid 0's partial 0.01
    assert [(d["tid"], loss, best) for d, loss, best in series] == [
        (1, 0.5, 0.5),
        (2, 0.9, 0.5),
        (3, 0.5, 0.5),
        (6, 0.2, 0.2),
    ]
    assert series[-1][2] == rules.ok_loss(rules.best_trial(lean))


def test_top_and_export_rank_as_the_rule(docs) -> None:
    rows = [inspect.trial_row(d) for d in usable(docs)]
    inspect.add_ranks(rows)
    ranks = {r["tid"]: r["rank"] for r in rows}
    assert ranks == {0: 5, 1: 2, 2: 4, 3: 3, 4: None, 6: 1, 7: 6, 8: None}
    top = inspect.rank_rows(inspect.ok_rows(rows), "loss")
    assert [r["tid"] for r in top] == [6, 1, 3, 2, 0, 7]
    worst_first = inspect.rank_rows(inspect.ok_rows(rows), "loss", descending=True)
    assert [r["tid"] for r in worst_first] == [2, 3, 1, 6, 7, 0]  # pruned still after full
    every = inspect.rank_rows(rows, "loss")  # --all-states: the others after the ranked ones
    assert [r["tid"] for r in every][:6] == [6, 1, 3, 2, 0, 7]
    assert {r["tid"] for r in every[6:]} == {4, 8}
    assert inspect.best_row(rows)["tid"] == 6
    assert inspect.best_row([r for r in rows if r["tid"] == 0]) is None


def test_plots_rank_as_the_rule(docs) -> None:
    pytest.importorskip("matplotlib")
    from coordinator import plots

    good = usable(docs)
    fig = plots.learning_curves("e", good)
    assert not isinstance(fig, str)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    best = [label.split()[1] for label in labels if label.startswith("tid ")]
    assert best == ["6", "1", "3", "2"]  # full trials only, rule order (1 before 3 on a tie)
    # mixed tid types tie on loss without a TypeError
    mixed = [doc("b", 0.3, minute=1), doc(2, 0.3, minute=2)]
    fig = plots.learning_curves("e", mixed)
    assert [x.split()[1] for x in fig.axes[0].get_legend_handles_labels()[1]] == ["2", "b"]

    rows = [inspect.trial_row(plots._plottable(d)) for d in good]
    fig = plots.loss_over_time("e", rows)
    assert not isinstance(fig, str)
    line = next(x for x in fig.axes[0].get_lines() if x.get_label() == "best so far")
    assert list(line.get_ydata()) == [0.5, 0.5, 0.5, 0.2]  # never pruned tid 0's 0.01
    assert "best 0.2" in fig.axes[0].get_title()


def test_dashboard_charts_rank_as_the_rule(docs) -> None:
    entries = [TrialEntry.from_doc(d, seq) for seq, d in enumerate(docs, 1)]
    by_tid = {e.tid: e for e in entries}
    assert by_tid[5].state == "malformed" and by_tid[5].ok_loss is None
    assert [e.tid for e in entries if e.counted] == [1, 2, 3, 6]
    line = best_series(entries)
    # starts at the first full trial's loss, not pruned tid 0's partial 0.01 (ended earlier)
    assert line["best"] == [0.5, 0.2] and line["tid"] == [1, 6]
    assert line["t"] == [
        by_tid[1].to_json(with_curve=False)["t1"],
        by_tid[6].to_json(with_curve=False)["t1"],
    ]
    # the best curves: full trials in rule order, the pruned ones only after them
    assert curve_tids(entries, best=5, recent=0, pruned=0) == [8, 6, 1, 3, 2, 0]  # 8: running
    # and the most recently pruned trials are drawn whatever the ranking leaves out (issue 23)
    pruned = [e.tid for e in entries if e.state == "pruned" and e.curve is not None]
    assert set(pruned) <= set(curve_tids(entries, best=0, recent=0))
