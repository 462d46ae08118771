"""Starting a search writes its experiment document conditionally: a cancel is never undone."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.search import SearchConfig, prepare_experiment
from coordinator.states import ExperimentStatus
from coordinator.store import TrialStore
from search_spaces import get_space


def _config(exp_key: str = "e") -> SearchConfig:
    space = get_space("quadratic")
    return SearchConfig(
        space=space, settings=space.resolve_settings({}), exp_key=exp_key, max_evals=5
    )


def _cancel_after_first_read(store: TrialStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """``hyperfleet cancel`` lands right after the coordinator read the document."""
    read = store.get_experiment
    calls = 0

    def get_then_cancel(exp_key: str) -> dict[str, Any] | None:
        nonlocal calls
        calls += 1
        doc = read(exp_key)
        if calls == 1:
            store.cancel_experiment(exp_key, settle_s=0)
        return doc

    monkeypatch.setattr(store, "get_experiment", get_then_cancel)


@pytest.mark.parametrize("previous", [ExperimentStatus.RUNNING, ExperimentStatus.CANCELLED])
def test_cancel_between_read_and_write_stays_cancelled(
    store: TrialStore, monkeypatch: pytest.MonkeyPatch, previous: ExperimentStatus
) -> None:
    prepare_experiment(store, _config())  # a first run ...
    if previous is ExperimentStatus.CANCELLED:
        store.cancel_experiment("e", settle_s=0)  # ... cancelled: a rerun restarts it
    _cancel_after_first_read(store, monkeypatch)
    prepare_experiment(store, _config())
    exp = store.get_experiment("e")
    assert exp["cancel_requested"] is True
    assert exp["status"] == ExperimentStatus.CANCELLED


def test_rerun_restarts_a_cancelled_experiment(store: TrialStore) -> None:
    prepare_experiment(store, _config())
    store.cancel_experiment("e", settle_s=0)
    doc = prepare_experiment(store, _config())
    exp = store.get_experiment("e")
    assert doc["resumed"] and exp["status"] == ExperimentStatus.RUNNING
    assert exp["cancel_requested"] is False


def test_a_concurrent_write_is_read_again(store: TrialStore, monkeypatch) -> None:
    prepare_experiment(store, _config())
    read = store.get_experiment
    calls = 0

    def get_then_annotate(exp_key: str) -> dict[str, Any] | None:
        nonlocal calls
        calls += 1
        doc = read(exp_key)
        if calls == 1:
            store.annotate_experiment(exp_key, {"test": {"accuracy": 0.5}})
        return doc

    monkeypatch.setattr(store, "get_experiment", get_then_annotate)
    prepare_experiment(store, _config())
    exp = read("e")
    assert exp["status"] == ExperimentStatus.RUNNING and exp["test"] == {"accuracy": 0.5}


def test_force_says_what_it_mixes(store: TrialStore, caplog: pytest.LogCaptureFixture) -> None:
    """--force continued another search without a word (new-user review)."""
    import dataclasses

    from coordinator.errors import ExperimentMismatch

    prepare_experiment(store, _config())
    space = get_space("quadratic")
    other = dataclasses.replace(_config(), settings=space.resolve_settings({"bound": 2.0}))
    with pytest.raises(ExperimentMismatch, match="bound"):
        prepare_experiment(store, other)
    assert not caplog.records
    prepare_experiment(store, dataclasses.replace(other, force=True))
    (line,) = [r.getMessage() for r in caplog.records if "--force" in r.getMessage()]
    assert "settings.bound=10.0" in line and "settings.bound=2.0" in line
    assert store.get_experiment("e")["settings"]["bound"] == 2.0


def test_a_refused_rerun_names_each_differing_field_whole(store: TrialStore) -> None:
    """A refused rerun showed the stored settings as one text cut at 200 characters, so a
    long settings document hid the field that differed. Now each differing field of it is
    named with its two values, and a hostile document's thousands of fields stay bounded."""

    from coordinator.errors import ExperimentMismatch

    prepare_experiment(store, _config())
    long_text = "x" * 500
    store.experiments.update_one(
        {"_id": "e"}, {"$set": {"settings.comment": long_text, "settings.bound": 3.0}}
    )
    with pytest.raises(ExperimentMismatch) as refused:
        prepare_experiment(store, _config())
    text = str(refused.value)
    assert "settings.bound=3.0" in text and "settings.bound=10.0" in text, text
    assert "settings.comment=(none)" in text and "settings.comment='xxx" in text, text
    assert len(text) < 1_000, len(text)

    # a field name from the database is escaped: it cannot forge a line or colour a terminal
    store.experiments.update_one(
        {"_id": "e"}, {"$set": {"settings": {"evil\nERROR: x\x1b[31m": 1}}}
    )
    with pytest.raises(ExperimentMismatch) as refused:
        prepare_experiment(store, _config())
    assert "\n" not in str(refused.value) and "\x1b" not in str(refused.value), refused.value
    assert "settings.evil\\nERROR" in str(refused.value), refused.value

    junk = {f"k{i}": i for i in range(5_000)}
    store.experiments.update_one({"_id": "e"}, {"$set": {"settings": junk, "pruning": junk}})
    with pytest.raises(ExperimentMismatch, match="more") as refused:
        prepare_experiment(store, _config())
    assert len(str(refused.value)) < 2_000, len(str(refused.value))


def test_a_rule_stored_before_promote_wait_existed_resumes(store: TrialStore) -> None:
    """An experiment whose stored rule lacks a field added since (``promote_wait``) ran as its
    default: a rerun with the same options resumes it, one asking for the field is refused."""
    import dataclasses

    from coordinator.errors import ExperimentMismatch
    from coordinator.pruning import resolve_pruning

    config = _config()
    rule = resolve_pruning("asha", config.settings, promote=True)
    config = dataclasses.replace(config, pruning=rule)
    prepare_experiment(store, config)
    old = store.get_experiment("e")
    del old["pruning"]["promote_wait"]  # what the version before --promote-wait wrote
    assert store.replace_experiment(old, version=old.get("version"))
    assert prepare_experiment(store, config)["resumed"]
    waiting = dataclasses.replace(config, pruning=dataclasses.replace(rule, promote_wait=True))
    with pytest.raises(ExperimentMismatch, match="pruning.promote_wait=False"):
        prepare_experiment(store, waiting)
