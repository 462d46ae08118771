"""The store's side of promotions (``--promote``, issue 21), as the attacker review of this round
found it: a promotion needs the rung record that paused the trial and its checkpoint; a cancel
gives a promoted trial that had not started back its paused result; the search's end stops the
trials still paused; junk rung records compete with nobody and break nothing."""

from __future__ import annotations

import logging

from coordinator import rules
from coordinator.pruning.base import PruningConfig, rung_key
from coordinator.pruning.promotion import Promoter
from coordinator.states import TrialState
from coordinator.store import Lease, TrialStore
from tests.conftest import queue_trials

CONFIG = PruningConfig(rule="asha", metric="loss", direction="min", max_epochs=9, promote=True)


def _paused(store: TrialStore, lease: Lease, value: float, *, checkpoint: bool = True) -> str:
    """Pause ``lease``'s trial at rung 0 (epoch 1) as a worker does; its rung key."""
    key = rung_key("exp", 0, 0, lease.tid)
    store.record_rung(
        {"_id": key, "exp_key": "exp", "bracket": 0, "rung": 0, "tid": lease.tid,
         "value": value, "decision": "pause"}
    )  # fmt: skip
    if checkpoint:
        assert store.save_checkpoint(lease, 1, b"state at epoch 1")
    pruned = {"epoch": 1, "rule": "asha", "metric": "loss", "value": value, "bracket": 0,
              "rung": 0, "paused": True}  # fmt: skip
    assert store.finish(lease, {"loss": value, "status": "ok", "pruned": pruned}, {})
    return key


def test_a_promotion_needs_the_pausing_record_and_the_checkpoint(store: TrialStore) -> None:
    queue_trials(store, 3)
    good, no_file, forged = (store.reserve_trial("w", exp_key="exp") for _ in range(3))
    key = _paused(store, good, 1.0)
    assert store.promote_paused(good.id, key, "promoted")
    doc = store.get_trial("exp", good.tid)
    assert doc["state"] == TrialState.NEW and doc["promotions"] == 1
    assert doc["paused_result"]["pruned"]["paused"] is True  # kept for a cancel
    assert store.rungs.find_one({"_id": key})["decision"] == "promoted"
    assert doc["attempt_history"][-1]["outcome"] == "paused"

    key = _paused(store, no_file, 2.0, checkpoint=False)  # it would train from epoch 0
    assert not store.promote_paused(no_file.id, key, "promoted")
    # a finished trial given a paused result by hand, with no rung record that paused it
    assert store.save_checkpoint(forged, 1, b"x")
    pruned = {"epoch": 1, "rung": 0, "bracket": 0, "paused": True}
    assert store.finish(forged, {"loss": 0.1, "status": "ok", "pruned": pruned}, {})
    assert not store.promote_paused(forged.id, rung_key("exp", 0, 0, forged.tid), "promoted")
    assert store.get_trial("exp", forged.tid)["state"] == TrialState.DONE


def test_a_cancel_gives_a_waiting_promoted_trial_its_paused_result_back(store: TrialStore) -> None:
    queue_trials(store, 2)
    lease = store.reserve_trial("w", exp_key="exp")
    assert store.promote_paused(lease.id, _paused(store, lease, 1.5), "promoted")
    store.cancel_queued("exp")
    doc = store.get_trial("exp", lease.tid)
    assert doc["state"] == TrialState.DONE and doc["result"]["loss"] == 1.5
    assert doc["result"]["pruned"]["paused"] is True
    assert store.count("exp", [TrialState.CANCEL]) == 1  # the other queued trial


def test_the_search_end_stops_what_is_still_paused(store: TrialStore) -> None:
    queue_trials(store, 1)
    lease = store.reserve_trial("w", exp_key="exp")
    key = _paused(store, lease, 1.0)
    other = rung_key("other", 0, 0, lease.tid)  # another experiment's trial of the same tid
    store.record_rung({"_id": other, "exp_key": "other", "tid": lease.tid, "decision": "pause"})
    assert store.drop_checkpoints(trial_ids=[lease.id]) == 0  # a worker keeps it
    assert store.drop_checkpoints(exp_key="exp") == 1  # the search's end does not
    doc = store.get_trial("exp", lease.tid)
    assert doc["checkpoint"] is None and doc["result"]["pruned"]["paused"] is False
    record = store.rungs.find_one({"_id": key})  # the record says what became of it
    assert (record["decision"], record["why"]) == ("prune", "still paused when the search ended")
    assert store.rungs.find_one({"_id": other})["decision"] == "pause"
    assert not store.promote_paused(lease.id, key, "a rerun")  # never promoted later
    assert store.rungs.find_one({"_id": key})["decision"] == "prune"  # nor its record


def test_the_search_end_settles_the_record_of_a_promotion_cut_short(store: TrialStore) -> None:
    """A promotion cut short between its two writes leaves the trial paused under a
    ``promoted`` record; the end stops the trial and its record says so (review: it stayed
    ``promoted``). An earlier rung's ``promoted`` record of a trial paused again is kept."""
    queue_trials(store, 2)
    cut, again = (store.reserve_trial("w", exp_key="exp") for _ in range(2))
    key = _paused(store, cut, 1.0)
    store.rungs.update_one({"_id": key}, {"$set": {"decision": "promoted"}})  # then it died
    earlier = rung_key("exp", 0, 0, again.tid)  # promoted from rung 0, paused at rung 1
    store.record_rung({"_id": earlier, "exp_key": "exp", "tid": again.tid, "decision": "promoted"})
    later = rung_key("exp", 0, 1, again.tid)
    store.record_rung({"_id": later, "exp_key": "exp", "tid": again.tid, "decision": "pause"})
    assert store.save_checkpoint(again, 3, b"state at epoch 3")
    pruned = {"epoch": 3, "rule": "asha", "value": 0.5, "bracket": 0, "rung": 1, "paused": True}
    assert store.finish(again, {"loss": 0.5, "status": "ok", "pruned": pruned}, {})
    store.jobs.insert_one(  # junk beside them: a paused result without a usable rung
        {"exp_key": "exp", "tid": 99, "state": int(TrialState.DONE), "checkpoint": None,
         "result": {"pruned": {"paused": True, "rung": "x", "bracket": 0}}}
    )  # fmt: skip

    store.drop_checkpoints(exp_key="exp")
    decisions = {k: store.rungs.find_one({"_id": k})["decision"] for k in (key, earlier, later)}
    assert decisions == {key: "prune", earlier: "promoted", later: "prune"}
    assert not store.jobs.count_documents({"exp_key": "exp", "result.pruned.paused": True})


def test_the_sweep_while_the_search_runs_keeps_paused_trials_checkpoints(
    store: TrialStore, caplog
) -> None:
    """A long search on pre-empted workers: every ``checkpoint_sweep_s`` the housekeeping
    deletes what killed workers left (an ended trial's linked checkpoint, a file never linked),
    and nothing a promotion or a running trial needs."""
    import hashlib

    from coordinator.housekeeping import Housekeeping
    from coordinator.trial_view import TrialView

    queue_trials(store, 3)
    paused, died, running = (store.reserve_trial("w", exp_key="exp") for _ in range(3))
    _paused(store, paused, 1.0)
    assert store.save_checkpoint(died, 2, b"linked")  # its worker died after the finish:
    assert store.finish(died, {"loss": 2.0, "status": "ok"}, {})  # the link stays
    data = b"never linked"  # and an earlier attempt's file: written, then killed
    store.parts.checkpoints._put(died, 1, data, hashlib.sha256(data).hexdigest())
    assert store.save_checkpoint(running, 1, b"running")
    housekeeping = Housekeeping(store, "exp", checkpoint_sweep_s=3600)
    view = TrialView(store, "exp", None)
    housekeeping.tick(view)
    files = store.db["fs.files"]
    assert files.count_documents({"kind": "checkpoint"}) == 4  # not yet: once an hour here

    housekeeping.checkpoint_sweep_s = 0
    with caplog.at_level(logging.INFO, logger="coordinator.housekeeping"):
        housekeeping.tick(view)
    assert "deleted 2 checkpoint files of ended trials" in caplog.text
    assert sorted(f["tid"] for f in files.find({"kind": "checkpoint"})) == sorted(
        [paused.tid, running.tid]
    )
    doc = store.get_trial("exp", paused.tid)
    assert doc["checkpoint"] is not None and doc["result"]["pruned"]["paused"] is True
    assert store.get_trial("exp", died.tid)["checkpoint"] is None
    assert store.load_checkpoint(running).data == b"running"


def test_junk_rung_records_compete_with_nobody(store: TrialStore) -> None:
    for tid, value in [(1, 0.5), (2, "abc"), (None, 0.1), (True, 0.2), (3, float("inf"))]:
        store.rungs.insert_one({"exp_key": "exp", "bracket": 0, "rung": 0, "tid": tid,
                                "value": value})  # fmt: skip
    assert store.rung_values("exp", 0, 0) == {1: 0.5, 3: float("inf")}


def test_a_pause_that_could_not_be_taken_says_prune(store: TrialStore) -> None:
    key = rung_key("exp", 0, 0, 4)
    store.record_rung({"_id": key, "exp_key": "exp", "tid": 4, "decision": "pause"})
    store.settle_pause(key, "no checkpoint")
    record = store.rungs.find_one({"_id": key})
    assert (record["decision"], record["why"]) == ("prune", "no checkpoint")


def test_a_paused_trial_with_an_unusable_rung_is_never_promoted(store: TrialStore, caplog) -> None:
    caplog.set_level(logging.WARNING)
    promoter = Promoter(store, CONFIG, "exp")
    docs = [
        {"_id": i, "tid": i, "state": int(TrialState.DONE),
         "result": {"pruned": {"paused": True, "rung": rung, "bracket": 0}}}
        for i, rung in enumerate(["0", True, 2**62, None])
    ]  # fmt: skip
    assert promoter.step(docs) == [] and promoter.step(docs) == []
    assert caplog.text.count("unusable rung record") == 4  # once each, not per step


def _pause(store: TrialStore, lease: Lease, rung: int, seconds: object) -> str:
    """End ``lease``'s segment paused at ``rung`` after ``seconds``, as a worker does."""
    key = rung_key("exp", 0, rung, lease.tid)
    store.record_rung(
        {"_id": key, "exp_key": "exp", "bracket": 0, "rung": rung, "tid": lease.tid,
         "value": 1.0, "decision": "pause"}
    )  # fmt: skip
    assert store.save_checkpoint(lease, rung + 1, b"state")
    pruned = {"epoch": rung + 1, "rung": rung, "bracket": 0, "paused": True, "value": 1.0}
    fields: dict = {"duration_s": seconds}
    if (earlier := rules.earlier_segments_s(lease.doc)) is not None:
        fields["segments_duration_s"] = earlier
    assert store.finish(lease, {"loss": 1.0, "status": "ok", "pruned": pruned}, fields)
    return key


def test_a_promoted_trial_keeps_the_seconds_of_its_earlier_segments(store: TrialStore) -> None:
    """A promoted trial's ``duration_s`` is its last segment's; each promotion keeps the paused
    segment's in its attempt history entry, and the segments before the last one add up in
    ``segments_duration_s`` (the last note left a promoted trial's time covering its last
    segment only). Junk counts nothing."""
    queue_trials(store, 1)
    for rung, seconds in enumerate((2.0, 3.5, "abc")):
        lease = store.reserve_trial("w", exp_key="exp")
        assert store.promote_paused(lease.id, _pause(store, lease, rung, seconds), "promoted")
    lease = store.reserve_trial("w", exp_key="exp")
    assert rules.earlier_segments_s(lease.doc) == 5.5
    paused = [e for e in lease.doc["attempt_history"] if e["outcome"] == "paused"]
    assert [e["duration_s"] for e in paused] == [2.0, 3.5, None]


def test_a_promotion_never_counts_a_segment_twice(store: TrialStore) -> None:
    """Attacker review: the first version added the paused segment's seconds to
    ``segments_duration_s`` at the promotion while ``duration_s`` still held them, so a
    promoted trial cancelled before it started (or lost until it failed) counted that segment
    twice. ``duration_s + segments_duration_s`` is the time of the segments that ended."""
    queue_trials(store, 1)
    lease = store.reserve_trial("w", exp_key="exp")
    assert store.promote_paused(lease.id, _pause(store, lease, 0, 2.0), "promoted")
    lease = store.reserve_trial("w", exp_key="exp")
    assert store.promote_paused(lease.id, _pause(store, lease, 1, 3.0), "promoted")
    doc = store.get_trial("exp", lease.tid)  # promoted, waiting: two segments ran
    assert doc["duration_s"] + doc["segments_duration_s"] == 5.0
    store.cancel_queued("exp")  # the cancel gives it back its paused result
    doc = store.get_trial("exp", lease.tid)
    assert doc["state"] == TrialState.DONE
    assert doc["duration_s"] + doc["segments_duration_s"] == 5.0
