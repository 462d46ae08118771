"""The GridFS chunks of an upload whose writer was SIGKILLed in the middle (GridFS writes a file's
document after its chunks, so no file document owns them) are deleted once they are old enough;
uploads still going, finished files and other writers' junk chunks are kept."""

from __future__ import annotations

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
from coordinator.store import TrialStore
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


def test_a_killed_upload_s_chunks_go_once_old_enough(server, store: TrialStore) -> None:
    kept = gridfs.GridFS(store.db).put(b"y" * 600_000, _id=_begun(7200))  # finished: 3 chunks
    killed = _killed_upload(server, store, seconds_ago=120)
    left = _chunks(store, killed)
    assert left > 100  # what the kill left: 48 MB of chunks, and no file document
    assert store.db["fs.files"].count_documents({"_id": killed}) == 0

    assert store.drop_orphan_chunks(min_age_s=3600) == 0  # 2 minutes old: could be uploading
    assert _chunks(store, killed) == left

    going = _begun(0)  # an upload begun just now, its first chunk sent
    store.db["fs.chunks"].insert_one({"files_id": going, "n": 0, "data": b"z"})
    assert store.drop_orphan_chunks(min_age_s=60) == 1
    assert _chunks(store, killed) == 0
    assert _chunks(store, going) == 1
    assert gridfs.GridFS(store.db).get(kept).read() == b"y" * 600_000


def test_junk_chunks_and_a_hand_made_file_document_are_kept(store: TrialStore) -> None:
    old = ObjectId.from_datetime(ObjectId().generation_time.replace(year=2020))
    chunks = store.db["fs.chunks"]
    chunks.insert_many(
        [
            {"files_id": "a string", "n": 0, "data": b"1"},
            {"files_id": {"$gt": 1}, "n": 0, "data": b"2"},
            {"files_id": old, "n": "0", "data": b"3"},  # no first chunk: not an upload
            {"files_id": None, "n": 0, "data": b"4"},
            {"n": 0, "data": b"5"},
        ]
    )
    documented = ObjectId.from_datetime(old.generation_time.replace(year=2021))
    chunks.insert_one({"files_id": documented, "n": 0, "data": b"6"})
    store.db["fs.files"].insert_one({"_id": documented, "length": 1, "chunkSize": 255})
    assert store.drop_orphan_chunks(min_age_s=0) == 0
    assert chunks.count_documents({}) == 6


def test_the_search_s_housekeeping_sweeps_them(
    server, store: TrialStore, caplog: pytest.LogCaptureFixture
) -> None:
    killed = _killed_upload(server, store, seconds_ago=120)
    housekeeping = Housekeeping(store, "exp", checkpoint_sweep_s=0, orphan_chunk_age_s=60)
    with caplog.at_level(logging.INFO, logger="coordinator.housekeeping"):
        housekeeping.tick(TrialView(store, "exp", None))
    assert "deleted the GridFS chunks of 1 upload that never finished" in caplog.text
    assert _chunks(store, killed) == 0


def _old_orphan(store: TrialStore) -> ObjectId:
    """Chunks of an upload begun 7 hours ago that never got its file document."""
    file_id = _begun(7 * 3600)
    store.db["fs.chunks"].insert_one({"files_id": file_id, "n": 0, "data": b"left"})
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
    young = _begun(60)
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
