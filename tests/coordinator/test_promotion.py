"""Promotion-based ASHA (``--prune asha --promote``, issue 21) end to end: a real search through
the CLI against a real worker process. Trials below a rung's cut pause with a checkpoint; the
coordinator's loop promotes those that rank in the rung's best 1/η later, and they resume after
the rung's epoch: no epoch is trained twice, every decision is in the rung records, and what is
still paused at the end is a pruned trial without a checkpoint left behind."""

from __future__ import annotations

import collections
import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pymongo
import pytest

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import connect
from tests.conftest import (
    cli_env,
    hyperfleet,
    queue_trials,
    start_worker,
    stop_all,
    wait_for,
)
from tests.coordinator.store.test_promotion_store import _paused

SPACES = "tests/spaces_for_tests.py"
EPOCHS = 9
ETA = 3


def _promote_search(
    server: EmbeddedServer, db_name: str, key: str, log: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """``search rungs`` with ASHA promotions (η = ETA, ``by_tid``: each trial worse than those
    before it) against one real worker; ``options`` add to or override the defaults."""
    worker = start_worker(
        server.uri, db_name, "--exp-key", key, "--spaces", SPACES, "--idle-timeout", "60"
    )
    try:
        return hyperfleet(
            "search", "rungs", "--mongo", server.uri, "--db", db_name, "--exp-key", key,
            "--spaces", SPACES, "--set", f"epochs={EPOCHS}", "--set", f"log={log}",
            "--set", "by_tid=true", "--prune", "asha", "--promote",
            "--prune-reduction", str(ETA), "--algo", "rand", "--seed", "7", "--no-progress",
            *options, timeout=300,
        )  # fmt: skip
    finally:
        stop_all([worker])


def test_paused_trials_are_promoted_and_resume_after_their_rung(
    server: EmbeddedServer, db_name: str, tmp_path: Path
) -> None:
    """Each trial is worse than those before it (``by_tid``), so which ones pause and which
    are promoted does not depend on the order they reach a rung: at the end the rung's best
    ``14 // 3 = 4`` are tids 0-3, and those of them that paused must have been promoted."""
    key = "promote"
    log = tmp_path / "epochs.log"
    common = ["--mongo", server.uri, "--db", db_name]
    search = _promote_search(server, db_name, key, log, "--max-evals", "14")
    assert search.returncode == 0, search.stderr

    db = pymongo.MongoClient(server.uri)[db_name]
    trials = {d["tid"]: d for d in db.jobs.find({"exp_key": key})}
    assert len(trials) == 14 and all(d["state"] == TrialState.DONE for d in trials.values())

    # no epoch trained twice, and a paused-then-promoted trial trained on after its rung
    trained = [tuple(map(int, line.split())) for line in log.read_text().split("\n") if line]
    twice = [pair for pair, n in collections.Counter(trained).items() if n > 1]
    assert twice == [], twice
    promoted = {
        tid: [h for h in d.get("attempt_history", []) if h["outcome"] == "paused"]
        for tid, d in trials.items()
    }
    promoted = {tid: h for tid, h in promoted.items() if h}
    assert promoted, "no trial was promoted: " + search.stderr[-2000:]
    for tid, history in promoted.items():
        doc = trials[tid]
        epochs = [e["epoch"] for e in doc["epochs"]]
        assert epochs == list(range(1, len(epochs) + 1)), (tid, epochs)  # the curve continues
        paused_at = history[-1]["paused_at_epoch"]
        assert doc["resumed_from_epoch"] == paused_at and max(epochs) > paused_at
        assert doc.get("attempts", 0) == 0  # a promotion is no failed attempt
        # the seconds of the segments before the last one are kept beside its duration_s
        earlier = sum(h["duration_s"] for h in history)
        assert earlier > 0 and doc["segments_duration_s"] == pytest.approx(earlier, abs=1e-5)
    assert len(trained) < 14 * EPOCHS  # paused trials trained less
    shown = hyperfleet("show", *common, "--exp-key", key, str(next(iter(promoted))))
    assert "earlier segments" in shown.stdout, shown.stdout
    assert re.search(r"paused .*ran \d+\.\d{3} s", shown.stdout), shown.stdout

    # every decision is in the rung records, and each promotion follows ASHA's rule
    records = list(db.rungs.find({"exp_key": key}))
    decisions = collections.Counter(r["decision"] for r in records)
    # (a trial may be promoted at several rungs: one record and one history entry each)
    assert decisions["promoted"] == sum(map(len, promoted.values())), decisions
    assert decisions["continue"] > 0, decisions
    for tid, history in promoted.items():  # each with the inputs of its decision
        for entry in history:  # ranked in a full rung, or the best of a rung left short at the end
            ranked = f"is within the best 1/{ETA} of" in entry["reason"]
            assert ranked or "as the search ends" in entry["reason"], entry
            record = db.rungs.find_one({"exp_key": key, "tid": tid, "rung": entry["rung"]})
            assert record is not None and record["decision"] == "promoted", record

    # what was still paused at the end is stopped for good, its checkpoint deleted
    ended = [r for r in records if r.get("why") == "still paused when the search ended"]
    assert len(ended) >= 1 and decisions["pause"] == 0  # some never ranked: records say so
    assert all(r["decision"] == "prune" for r in ended)
    assert not any((d["result"].get("pruned") or {}).get("paused") for d in trials.values())
    assert all(d.get("checkpoint") is None for d in trials.values())
    assert db["fs.files"].count_documents({"kind": "checkpoint"}) == 0
    status = hyperfleet("status", *common, "--exp-key", key)
    assert f"promoted  {len(promoted)} trial" in status.stdout, status.stdout


def test_a_search_of_fewer_trials_than_eta_still_trains_its_best_to_the_end(
    server: EmbeddedServer, db_name: str, tmp_path: Path
) -> None:
    """With ``--promote-wait``, as in Li et al.'s ASHA, a rung of fewer than η values promotes
    nobody while the search may still queue trials; at its end such a rung promotes its best,
    so two trials with η = 3 end with the better one trained through every epoch and the other
    paused, then stopped."""
    key = "promote-two"
    log = tmp_path / "epochs.log"
    common = ["--mongo", server.uri, "--db", db_name]
    search = _promote_search(server, db_name, key, log, "--max-evals", "2", "--promote-wait")
    assert search.returncode == 0, search.stderr
    db = pymongo.MongoClient(server.uri)[db_name]
    best, other = sorted(db.jobs.find({"exp_key": key}), key=lambda d: d["tid"])
    assert [e["epoch"] for e in best["epochs"]] == list(range(1, EPOCHS + 1)), best["epochs"]
    assert not best["result"].get("pruned") and best.get("promotions", 0) >= 1
    # both paused at epoch 1 (fewer than η values there: nobody ranked), the better promoted
    first = db.rungs.find_one({"exp_key": key, "tid": best["tid"], "rung": 0})
    assert first["decision"] == "promoted" and first["threshold"] is None, first
    assert [e["epoch"] for e in other["epochs"]] == [1]
    assert other["result"]["pruned"]["epoch"] == 1
    shown = hyperfleet("show", *common, "--exp-key", key, str(other["tid"])).stdout
    assert "too few values at its rung to rank it" in shown, shown
    assert "still paused when the search ended" in shown, shown
    trained = [line for line in log.read_text().split("\n") if line]
    assert len(trained) == len(set(trained)) == EPOCHS + 1  # no epoch twice
    reasons = [h["reason"] for h in best["attempt_history"] if h["outcome"] == "paused"]
    assert reasons and all("as the search ends" in r for r in reasons), reasons


def test_a_search_stopped_before_any_trial_trained_through_still_trains_its_best(
    server: EmbeddedServer, db_name: str, tmp_path: Path
) -> None:
    """``--promote-wait``: a ``--timeout`` stops the queueing and, with it, the promotions; but
    one that hits while every trial is still paused at a rung of fewer than η values (nothing
    trained through yet) promotes their best as the search ends, so it never ends with
    nothing trained through. A cancel does not (tested in the store tests: the end stops them)."""
    key = "promote-timeout"
    search = _promote_search(
        server, db_name, key, tmp_path / "epochs.log", "--max-evals", "40", "--set",
        "sleep=0.3", "--promote-wait", "--timeout", "0.5",
    )  # fmt: skip
    assert search.returncode == 0, search.stderr
    cut = "(stopped early: timeout of 0.5 s reached; paused trials were promoted past it"
    assert cut in search.stdout, search.stdout
    db = pymongo.MongoClient(server.uri)[db_name]
    trials = list(db.jobs.find({"exp_key": key}))
    assert 1 <= len(trials) < 40 and all(d["state"] == TrialState.DONE for d in trials)
    through = [d for d in trials if not d["result"].get("pruned")]
    assert len(through) == 1, [(d["tid"], d["result"]) for d in trials]
    assert [e["epoch"] for e in through[0]["epochs"]] == list(range(1, EPOCHS + 1))


def test_paused_trials_are_shown_as_paused(server: EmbeddedServer, db_name: str) -> None:
    """While the search runs, ``status``, ``top`` and ``show`` say which trials are paused."""
    store = connect(server.uri, db_name)
    queue_trials(store, 2)
    paused, promoted = (store.reserve_trial("w", exp_key="exp") for _ in range(2))
    _paused(store, paused, 1.25)
    assert store.promote_paused(promoted.id, _paused(store, promoted, 1.5), "promoted")
    store.close()
    common = ["--mongo", server.uri, "--db", db_name, "--exp-key", "exp"]
    show = hyperfleet("show", *common, str(paused.tid))
    assert "paused at epoch 1 by asha" in show.stdout.splitlines()[0], show.stdout
    # paused with no threshold: fewer than η values at its rung (--promote ranks nobody then)
    assert "too few values at its rung to rank it when it paused" in show.stdout, show.stdout
    top = hyperfleet("top", *common, "-n", "5")
    assert "paused" in top.stdout.splitlines()[0], top.stdout
    status = hyperfleet("status", *common).stdout
    assert "(1 paused at a rung)" in status and "promoted  1 trial resumed" in status, status


def test_promote_needs_a_rung_rule(server: EmbeddedServer, db_name: str) -> None:
    common = ["--mongo", server.uri, "--db", db_name, "--max-evals", "1", "--spaces", SPACES]
    median = hyperfleet("search", "rungs", *common, "--prune", "median", "--promote")
    assert median.returncode != 0 and "--promote works with" in median.stderr
    assert "Traceback" not in median.stderr
    alone = hyperfleet("search", "rungs", *common, "--promote")
    assert alone.returncode != 0 and "--promote needs --prune" in alone.stderr


def test_a_coordinator_killed_while_trials_are_paused_loses_none(
    server: EmbeddedServer, db_name: str, tmp_path: Path
) -> None:
    """Issue 21: "a paused trial is never lost when the coordinator dies". The coordinator is
    SIGKILLed while trials are paused; the same command run again takes the experiment over
    and goes on promoting from what is stored: every trial ends, none trains an epoch twice."""
    key = "promote-kill"
    log = tmp_path / "epochs.log"
    command = [
        sys.executable, "-m", "coordinator", "search", "rungs", "--mongo", server.uri,
        "--db", db_name, "--exp-key", key, "--spaces", SPACES, "--max-evals", "14",
        "--set", f"epochs={EPOCHS}", "--set", "sleep=0.05", "--set", f"log={log}",
        "--set", "by_tid=true", "--prune", "asha", "--promote", "--algo", "rand",
        "--seed", "7", "--no-progress",
    ]  # fmt: skip
    worker = start_worker(
        server.uri, db_name, "--exp-key", key, "--spaces", SPACES, "--idle-timeout", "60"
    )
    db = pymongo.MongoClient(server.uri)[db_name]
    paused = {"exp_key": key, "result.pruned.paused": True}
    try:
        first = subprocess.Popen(command, env=cli_env(), stderr=subprocess.DEVNULL)
        wait_for(lambda: db.jobs.count_documents(paused) >= 3, 120, what="3 paused trials")
        first.kill()
        first.wait(10)
        killed = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        again = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=300)
    finally:
        stop_all([worker])
    assert again.returncode == 0, again.stderr
    trials = list(db.jobs.find({"exp_key": key}))
    assert len(trials) == 14 and all(d["state"] == TrialState.DONE for d in trials)
    trained = [tuple(map(int, line.split())) for line in log.read_text().split("\n") if line]
    assert [p for p, n in collections.Counter(trained).items() if n > 1] == []
    promoted_at = [
        h["at"] for d in trials for h in d.get("attempt_history", []) if h["outcome"] == "paused"
    ]
    assert any(at > killed for at in promoted_at), promoted_at  # the second one promoted
    assert db["fs.files"].count_documents({"kind": "checkpoint"}) == 0


def test_cancel_ends_a_promote_wait_search_and_stops_its_paused_trials(
    server: EmbeddedServer, db_name: str, tmp_path: Path
) -> None:
    """Closing-note limitation, now tried end to end: ``hyperfleet cancel`` on a
    ``--promote-wait`` search while trials are paused. The search ends CANCELLED without the
    end-of-search promotion that ``--promote-wait`` makes when a search ends by itself, nothing
    is promoted after the cancel, and every paused trial is stopped for good: its rung record
    says so and its checkpoint is deleted. A cancel before any trial trained through leaves no
    successful trial: the search then exits 1 and says so (it did under CI load)."""
    key = "promote-cancel"
    common = ["--mongo", server.uri, "--db", db_name]
    worker = start_worker(
        server.uri, db_name, "--exp-key", key, "--spaces", SPACES, "--idle-timeout", "60"
    )
    search_log = tmp_path / "search.log"
    search = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "search", "rungs", *common, "--exp-key", key,
         "--spaces", SPACES, "--set", f"epochs={EPOCHS}", "--set", f"log={tmp_path / 'e.log'}",
         "--set", "by_tid=true", "--set", "sleep=0.05", "--prune", "asha", "--promote",
         "--promote-wait", "--algo", "rand", "--seed", "7", "--max-evals", "200",
         "--no-progress"],
        stdout=open(search_log, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env=cli_env(),
    )  # fmt: skip
    db = pymongo.MongoClient(server.uri)[db_name]
    paused = {"exp_key": key, "result.pruned.paused": True}
    try:
        wait_for(lambda: db.jobs.count_documents(paused) >= 4, 120, what="4 paused trials")
        cancel = hyperfleet("cancel", *common, "--exp-key", key)
        assert cancel.returncode == 0, cancel.stderr
        code = search.wait(60)
    finally:
        stop_all([search, worker])
    text = search_log.read_text()
    assert "(cancelled)" in text and "Traceback" not in text, text[-3000:]
    assert code == 0 or (code == 1 and f"no trial of {key!r} succeeded" in text), text[-3000:]
    exp = db.experiments.find_one({"_id": key})
    assert exp["status"] == "cancelled"
    at = exp["cancelled_at"].replace(tzinfo=None)
    records = list(db.rungs.find({"exp_key": key}))
    late = [r["tid"] for r in records if r.get("promoted_at") and r["promoted_at"] > at]
    assert late == [], (at, late)
    assert not any("as the search ends" in (r.get("why") or "") for r in records)
    trials = list(db.jobs.find({"exp_key": key}))
    assert not [d["tid"] for d in trials if d["state"] in (TrialState.NEW, TrialState.RUNNING)]
    assert db.jobs.count_documents(paused) == 0
    stopped = [r for r in records if r.get("why") == "still paused when the search ended"]
    assert len(stopped) >= 3 and all(r["decision"] == "prune" for r in stopped), records
    assert all(d.get("checkpoint") is None for d in trials)
    assert db["fs.files"].count_documents({"kind": "checkpoint"}) == 0
