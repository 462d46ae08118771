"""The GridFS chunks of an upload whose writer was SIGKILLed in the middle (GridFS writes a file's
document after its chunks, so no file document owns them) are deleted once a sweep first saw
them more than the age ago on the database's clock; uploads still going (whatever their writer's
clock or chosen id says), finished files and other writers' junk are kept
(coordinator/store/uploads.py)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import gridfs
import pytest
from bson import ObjectId

from coordinator.housekeeping import Housekeeping
from coordinator.search import Coordinator, SearchConfig
from coordinator.states import TrialState
from coordinator.store import TrialStore, connect, uploads
from coordinator.trial_view import TrialView
from search_spaces import get_space
from tests.conftest import cli_env, hyperfleet

# a worker's checkpoint upload begun at the file id given, killed once chunks reached the server
# (pymongo 4.20 sends them in batches of 48 MB: a smaller upload killed leaves nothing)
UPLOAD = textwrap.dedent(
    """
    import sys, time, gridfs, pymongo
    from bson import ObjectId
    db = pymongo.MongoClient(sys.argv[1])[sys.argv[2]]
    upload = gridfs.GridFS(db).new_file(_id=ObjectId(sys.argv[3]), kind="checkpoint")
    upload.write(b"x" * (48 * 2**20))
    print("sent", flush=True)
    time.sleep(600)
    """
)


def _begun(seconds_ago: float) -> ObjectId:
    """A file id as an upload begun ``seconds_ago`` gets it (pymongo makes it at the start)."""
    return ObjectId(struct.pack(">I", int(time.time() - seconds_ago)) + os.urandom(8))


def _killed_upload(server, store: TrialStore, seconds_ago: float) -> ObjectId:
    """The file id of a real upload SIGKILLed after its first 48 MB reached the server."""
    file_id = _begun(seconds_ago)
    proc = subprocess.Popen(
        [sys.executable, "-c", UPLOAD, server.uri, store.db.name, str(file_id)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "sent"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return file_id


def _chunks(store: TrialStore, file_id: object) -> int:
    return store.db["fs.chunks"].count_documents({"files_id": file_id})


def _noted(store: TrialStore) -> set:
    return {n["_id"] for n in store.db["orphan_uploads"].find() if n["_id"] != "sweep"}


def test_a_killed_upload_s_chunks_go_once_seen_long_enough(server, store: TrialStore) -> None:
    kept = gridfs.GridFS(store.db).put(b"y" * 600_000, _id=_begun(7200))  # finished: 3 chunks
    killed = _killed_upload(server, store, seconds_ago=0)
    left = _chunks(store, killed)
    assert left > 100  # what the kill left: 48 MB of chunks, and no file document
    assert store.db["fs.files"].count_documents({"_id": killed}) == 0

    assert store.drop_orphan_chunks(min_age_s=3600) == 0  # first seen now: could be uploading
    assert _chunks(store, killed) == left and _noted(store) == {killed}
    assert isinstance(store.db["orphan_uploads"].find_one()["first_seen"], dt.datetime)

    time.sleep(0.6)
    # uploads going on, first seen just now, whatever their ids say: a writer whose clock is
    # hours slow, one a day ahead, and one that chose an old document's id as its file's
    going = [_begun(7 * 3600), _begun(-86400), ObjectId.from_datetime(dt.datetime(2020, 1, 1))]
    store.db["fs.chunks"].insert_many([{"files_id": i, "n": 0, "data": b"z"} for i in going])
    assert store.drop_orphan_chunks(min_age_s=0.5) == 1  # the killed one, seen 0.6 s ago
    assert _chunks(store, killed) == 0
    assert [_chunks(store, i) for i in going] == [1, 1, 1] and _noted(store) == set(going)
    assert gridfs.GridFS(store.db).get(kept).read() == b"y" * 600_000

    finished = going[0]  # its upload finishes after it was noted: kept, and forgotten
    store.db["fs.files"].insert_one({"_id": finished, "length": 1, "chunkSize": 255})
    time.sleep(0.6)
    assert store.drop_orphan_chunks(min_age_s=0.5) == 2
    assert _chunks(store, finished) == 1 and _noted(store) == set()


def test_an_upload_still_sending_chunks_is_never_deleted(store: TrialStore) -> None:
    """Review: the age counted from the first sighting, so an upload slower than the age lost
    its chunks while it was still writing them. It counts from the last change now."""
    slow = ObjectId()
    chunks = store.db["fs.chunks"]
    chunks.insert_one({"files_id": slow, "n": 0, "data": b"a"})
    assert store.drop_orphan_chunks(min_age_s=3600) == 0  # noted with 1 chunk
    for n in (1, 2):  # a chunk more before every sweep: never due
        time.sleep(0.3)
        chunks.insert_one({"files_id": slow, "n": n, "data": b"b"})
        assert store.drop_orphan_chunks(min_age_s=0.2) == 0
    assert _chunks(store, slow) == 3
    time.sleep(0.3)  # then it stops: its writer was killed
    assert store.drop_orphan_chunks(min_age_s=0.2) == 1 and _chunks(store, slow) == 0


@pytest.mark.parametrize(
    "planted",
    [
        {"first_seen": dt.datetime(2000, 1, 1)},  # no change recorded
        {"changed": "long ago", "chunks": 1},
        {"changed": dt.datetime(2999, 1, 1), "chunks": 1},  # in the future: never due
        {"changed": dt.datetime(2000, 1, 1), "chunks": 7},  # another count than now
    ],
)
def test_a_planted_or_junk_note_does_not_decide(store: TrialStore, planted: dict) -> None:
    """A note copied from elsewhere or hand-made starts the clock again (from the database's
    now) instead of deleting a live upload, or keeping an orphan forever."""
    live = ObjectId()
    store.db["fs.chunks"].insert_one({"files_id": live, "n": 0, "data": b"a"})
    store.db["orphan_uploads"].insert_one({"_id": live, **planted})
    assert store.drop_orphan_chunks(min_age_s=3600) == 0 and _chunks(store, live) == 1
    note = store.db["orphan_uploads"].find_one({"_id": live})
    assert note["chunks"] == 1 and note["changed"] > store.server_time() - dt.timedelta(hours=1)
    time.sleep(0.3)
    assert store.drop_orphan_chunks(min_age_s=0.2) == 1  # then it goes like any other


def test_chunks_left_without_their_first_are_found_too(store: TrialStore) -> None:
    """A delete cut short removes a file's first chunks first: the rest is an upload of nobody
    (review: the sweep looked only at chunks ``n`` 0)."""
    half = ObjectId()
    store.db["fs.chunks"].insert_many([{"files_id": half, "n": n, "data": b"x"} for n in (7, 8)])
    assert store.drop_orphan_chunks(min_age_s=3600) == 0 and _noted(store) == {half}
    time.sleep(0.05)
    assert store.drop_orphan_chunks(min_age_s=0) == 1 and _chunks(store, half) == 0


def test_each_sweep_goes_on_where_the_last_one_stopped(
    server, store: TrialStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep reads a bounded part of ``fs.chunks``; the next one, of any process, goes on
    from there and starts over once it read everything."""
    monkeypatch.setattr(uploads, "PAGE", 2)  # a page of 2 chunks, one page per call
    monkeypatch.setattr(uploads, "SWEEP_BUDGET_S", 0.0)
    ids = sorted(ObjectId() for _ in range(3))
    store.db["fs.chunks"].insert_many([{"files_id": i, "n": 0, "data": b"x"} for i in ids])
    store.drop_orphan_chunks(min_age_s=3600)
    assert _noted(store) == set(ids[:2])
    other = connect(server.uri, store.db.name)  # another process's store
    try:
        other.drop_orphan_chunks(min_age_s=3600)
    finally:
        other.close()
    assert _noted(store) == set(ids)
    place = store.db["orphan_uploads"].find_one({"_id": "sweep"})
    assert place["after"] is None  # everything read: the next sweep starts over


def test_junk_chunks_notes_and_a_hand_made_file_document_are_kept(store: TrialStore) -> None:
    chunks = store.db["fs.chunks"]
    chunks.insert_many(
        [
            {"files_id": "a string", "n": 0, "data": b"1"},
            {"files_id": {"$gt": 1}, "n": 0, "data": b"2"},
            {"files_id": [ObjectId()], "n": 0, "data": b"3"},
            {"files_id": None, "n": 0, "data": b"4"},
            {"n": 0, "data": b"5"},
        ]
    )
    documented = ObjectId()
    chunks.insert_one({"files_id": documented, "n": 0, "data": b"6"})
    store.db["fs.files"].insert_one({"_id": documented, "length": 1, "chunkSize": 255})
    long_ago = dt.datetime(2020, 1, 1)
    store.db["orphan_uploads"].insert_many(
        [{"_id": "junk", "first_seen": long_ago}, {"_id": ObjectId(), "first_seen": "yesterday"}]
    )
    for _ in range(2):
        assert store.drop_orphan_chunks(min_age_s=0) == 0
        time.sleep(0.05)
    assert chunks.count_documents({}) == 6
    with pytest.raises(ValueError, match="finite"):
        store.drop_orphan_chunks(min_age_s=float("nan"))


def test_the_search_s_housekeeping_sweeps_them(
    server, store: TrialStore, caplog: pytest.LogCaptureFixture
) -> None:
    killed = _killed_upload(server, store, seconds_ago=0)
    housekeeping = Housekeeping(store, "exp", checkpoint_sweep_s=0, orphan_chunk_age_s=0.5)
    view = TrialView(store, "exp", None)
    housekeeping.tick(view)  # noted
    assert _chunks(store, killed) > 0
    time.sleep(0.6)
    with caplog.at_level(logging.INFO, logger="coordinator.housekeeping"):
        housekeeping.tick(view)
    assert "deleted the GridFS chunks of 1 upload that never finished" in caplog.text
    assert _chunks(store, killed) == 0


def _old_orphan(store: TrialStore) -> ObjectId:
    """Chunks of an upload that never got its file document, as a sweep noted them 7 hours
    ago (one chunk, unchanged since)."""
    file_id = ObjectId()
    store.db["fs.chunks"].insert_one({"files_id": file_id, "n": 0, "data": b"left"})
    seen = store.server_time() - dt.timedelta(hours=7)
    note = {"_id": file_id, "first_seen": seen, "changed": seen, "chunks": 1}
    store.db["orphan_uploads"].insert_one(note)
    return file_id


def test_the_search_s_end_and_reap_sweep_them_too(server, store: TrialStore) -> None:
    """A search shorter than the 10-minute sweep still sweeps once at its end, and `hyperfleet
    reap` sweeps by hand (new-user review: neither did)."""
    orphan = _old_orphan(store)
    space = get_space("quadratic")
    config = SearchConfig(
        space=space, settings=space.resolve_settings({}), exp_key="short", max_evals=2
    )
    coordinator = Coordinator(store, config)
    thread = threading.Thread(target=coordinator.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while thread.is_alive() and time.monotonic() < deadline:  # a worker, by hand
        lease = store.reserve_trial("hand", exp_key="short")
        if lease is None:
            time.sleep(0.05)
            continue
        assert store.finish(lease, {"loss": 1.0, "status": "ok"}, {})
    thread.join(10)
    assert not thread.is_alive() and store.count("short", [TrialState.DONE]) == 2
    assert _chunks(store, orphan) == 0

    orphan = _old_orphan(store)
    young = _begun(7 * 3600)  # an id hours old, but never seen before: kept
    store.db["fs.chunks"].insert_one({"files_id": young, "n": 0, "data": b"going"})
    uri = ("--mongo", server.uri, "--db", store.db.name)
    out = hyperfleet("reap", *uri)
    assert out.returncode == 0, out.stderr
    assert "deleted the GridFS chunks of 1 upload never finished" in out.stdout, out.stdout
    assert _chunks(store, orphan) == 0 and _chunks(store, young) == 1
    again = hyperfleet("reap", *uri)
    assert again.stdout == "reaped 0 trials\n", again.stdout  # nothing more to say


@pytest.mark.parametrize("value", ["soon", "-5", "nan", "59"])
def test_a_bad_age_setting_is_one_line_before_anything_is_done(server, store, value) -> None:
    orphan = _old_orphan(store)
    out = hyperfleet(
        "reap", "--mongo", server.uri, "--db", store.db.name,
        env=cli_env(HYPERFLEET_ORPHAN_CHUNK_AGE_S=value),
    )  # fmt: skip
    assert out.returncode != 0 and "reaped" not in out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "HYPERFLEET_ORPHAN_CHUNK_AGE_S" in lines[0], out.stderr
    assert "at least 600" in lines[0]
    assert _chunks(store, orphan) == 1


def test_the_age_setting_is_read(server, store: TrialStore) -> None:
    orphan = _old_orphan(store)  # 7 h old: kept when the age is 8 h
    env = cli_env(HYPERFLEET_ORPHAN_CHUNK_AGE_S=str(8 * 3600))
    out = hyperfleet("reap", "--mongo", server.uri, "--db", store.db.name, env=env)
    assert out.returncode == 0 and _chunks(store, orphan) == 1, out.stderr
