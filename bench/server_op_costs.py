"""Server CPU per operation on SecantusDB for the operations hyperfleet's hot path issues
(issue 19 diagnosis): how it moves with the jobs collection's indexes, document size, bulk vs
single writes, upsert vs insert, ``$$NOW`` pipelines vs ``$currentDate`` vs plain ``$set``,
projection on reads, and the daemon's start options (``--sync-on-commit``, ``--log-level``).

Each server configuration is a fresh ``secantusd-py --standalone --storage-path :memory:``
daemon, started as :class:`coordinator.server.EmbeddedServer` starts it. Server CPU is the sum
of ``/proc/PID/task/*/schedstat`` on-CPU time (ns) over ``K`` repetitions of one operation,
divided by ``K``; variants are interleaved in rounds and the median over rounds is reported,
with the client's median wall time per operation beside it.

    .venv/bin/python bench/server_op_costs.py [--rounds 5] [--k 100] [--configs sync,nosync,...]

Collections (same server, 500 trial documents like the benchmark's, 468 DONE, 16 RUNNING, 16 NEW):
``idx4`` the store's four secondary indexes (what ``create_jobs_indexes`` makes), ``idx1`` only
``(exp_key, state, tid)``, ``idx0`` only ``_id``, ``big`` idx4 with a 20 kB ``misc`` payload.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymongo
from bson import ObjectId

N_DOCS = 500
EXP = "bench-exp"
OWNER = "vm:1:abc"
INDEXES = {
    "idx4": [
        [("exp_key", 1), ("state", 1), ("tid", 1)],
        [("state", 1), ("lease_expires", 1)],
        [("exp_key", 1), ("mtime", 1)],
        [("exp_key", 1), ("tid", 1)],
    ],
    # the store's indexes less (exp_key, tid) (dashboard/show) and less (state, lease_expires)
    "idx3": [
        [("exp_key", 1), ("state", 1), ("tid", 1)],
        [("state", 1), ("lease_expires", 1)],
        [("exp_key", 1), ("mtime", 1)],
    ],
    "idx2": [[("exp_key", 1), ("state", 1), ("tid", 1)], [("exp_key", 1), ("mtime", 1)]],
    "idx1": [[("exp_key", 1), ("state", 1), ("tid", 1)]],
    "idx0": [],
    "big": "idx4",
}


def trial_doc(tid: int, state: int, big: bool = False) -> dict[str, Any]:
    """A trial document shaped like the benchmark's (``quadratic``, ~1.1 kB)."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    worker = {
        "id": OWNER,
        "host": "vm",
        "pid": 1,
        "exp_key": EXP,
        "trust_pickled": False,
        "gpu": None,
        "host_gpu": None,
        "cuda_visible_devices": None,
        "threads": None,
        "save_models": "best",
        "steps_per_execution": 32,
    }
    misc: dict[str, Any] = {
        "tid": tid,
        "cmd": ["domain_attachment", "FMinIter_Domain"],
        "workdir": None,
        "idxs": {"x": [tid]},
        "vals": {"x": [0.2]},
    }
    if big:
        misc["idxs"] = {f"p{i}": [tid] for i in range(200)}
        misc["vals"] = {f"p{i}": [0.123456789 * i] for i in range(200)}
        misc["blob"] = "x" * 12000
    doc: dict[str, Any] = {
        "_id": ObjectId(),
        "exp_key": EXP,
        "tid": tid,
        "attempt": 1,
        "attempts": 0,
        "book_time": now,
        "misc": misc,
        "mtime": now,
        "owner": OWNER,
        "queued": now,
        "refresh_time": now,
        "result": {"status": "new"},
        "space": "quadratic",
        "spec": None,
        "state": state,
        "version": 1,
        "lease_expires": None,
        "lease_s": 30.0,
        "worker": worker,
        "held": False,
        "params": {"x": 0.2},
    }
    if state == 0:
        doc.update(owner=None, attempt=None, book_time=None, worker=None)
    if state == 2:
        doc.update(
            result={"loss": 0.04, "status": "ok"},
            duration_s=0.02,
            ended=now,
            timing={"evaluate_s": 0.0196, "wait_child_s": 0.0006, "run_s": 0.0202},
        )
    return doc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, sync: bool, log_level: str, catalog_cache: bool = False) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="hf-opcost-"))
        (self.workdir / "secantusd.toml").write_text("")
        self.port = free_port()
        exe = Path(sys.executable).parent / "secantusd-py"
        if catalog_cache:  # experiment: bench/secantusd_catalog_cache.py
            exe = Path(__file__).resolve().parent / "secantusd_catalog_cache.py"
        cmd = [
            *([sys.executable] if catalog_cache else []),
            str(exe),
            "--config",
            str(self.workdir / "secantusd.toml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            ":memory:",
            "--standalone",
            "--log-level",
            log_level,
        ]
        if sync:
            cmd.append("--sync-on-commit")
        self.log = open(self.workdir / "log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.uri = f"mongodb://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                c = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500)
                c.admin.command("ping")
                c.close()
                break
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError((self.workdir / "log").read_text()[-2000:]) from None
                time.sleep(0.1)

    def cpu_ns(self) -> int:
        total = 0
        for task in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                with open(f"/proc/{self.proc.pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
        return total

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Fixture:
    """One collection's documents and the operations measured on it."""

    def __init__(self, db: Any, name: str) -> None:
        self.c = db[name]
        self.name = name
        big = name == "big"
        specs = INDEXES[name]
        if isinstance(specs, str):
            specs = INDEXES[specs]
        for spec in specs:
            self.c.create_index(spec)
        docs = []
        for tid in range(N_DOCS):
            # like the benchmark mid-search: most DONE, 16 RUNNING, 16 queued (8 per worker)
            state = 2 if tid < N_DOCS - 32 else (1 if tid < N_DOCS - 16 else 0)
            docs.append(trial_doc(tid, state, big))
        self.c.insert_many(docs)
        self.t0 = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        # toggled documents: the 16 RUNNING ones, 8 for endings, 8 for claims (4 at a time)
        running = [d["_id"] for d in docs[N_DOCS - 32 : N_DOCS - 16]]
        self.toggle, self.claimable = running[:8], running[8:]
        self.state = dict.fromkeys(running, 1)
        self.i = 0
        self.j = 0
        self.big = big
        self.ins_marker = 0

    def _next(self, n: int = 1) -> list[ObjectId]:
        out = []
        for _ in range(n):
            out.append(self.toggle[self.i % len(self.toggle)])
            self.i += 1
        return out

    def _flip(self, _id: ObjectId) -> tuple[int, int]:
        s = self.state[_id]
        t = 2 if s == 1 else 1
        self.state[_id] = t
        return s, t

    # -- the operations ------------------------------------------------------------------
    def ending_filter_update(self, how: str) -> tuple[dict[str, Any], Any]:
        _id = self._next()[0]
        s, t = self._flip(_id)
        fence = {"_id": _id, "state": s, "owner": OWNER, "attempt": 1}
        fields = {
            "state": t,
            "result": {"loss": 0.04, "status": "ok"},
            "lease_expires": None,
            "duration_s": 0.02,
        }
        if how == "idonly":  # no fence: the write path's _id point-lookup fast path
            fence = {"_id": _id}
            how = "currentDate"
        if how == "idcond":  # fence moved into a pipeline: filter {_id} only, nModified says
            ok = {
                "$and": [
                    {"$eq": ["$state", s]},
                    {"$eq": ["$owner", OWNER]},
                    {"$eq": ["$attempt", 1]},
                ]
            }
            new = {**fields, "ended": "$$NOW", "refresh_time": "$$NOW", "mtime": "$$NOW"}
            sets = {
                k: {
                    "$cond": [
                        ok,
                        v if isinstance(v, str) and v.startswith("$$") else {"$literal": v},
                        f"${k}",
                    ]
                }
                for k, v in new.items()
            }
            sets["version"] = {"$cond": [ok, {"$add": ["$version", 1]}, "$version"]}
            return {"_id": _id}, [{"$set": sets}]
        if how == "currentDate":
            upd: Any = {
                "$set": fields,
                "$currentDate": {"ended": True, "refresh_time": True, "mtime": True},
                "$inc": {"version": 1},
            }
        elif how == "set":
            now = dt.datetime.now(dt.UTC)
            upd = {
                "$set": {**fields, "ended": now, "refresh_time": now, "mtime": now},
                "$inc": {"version": 1},
            }
        elif how == "set_noinc":
            now = dt.datetime.now(dt.UTC)
            upd = {"$set": {**fields, "ended": now, "refresh_time": now, "mtime": now}}
        else:  # pipeline
            upd = [
                {
                    "$set": {
                        **{k: {"$literal": v} for k, v in fields.items()},
                        "ended": "$$NOW",
                        "refresh_time": "$$NOW",
                        "mtime": "$$NOW",
                        "version": {"$add": [{"$ifNull": ["$version", 0]}, 1]},
                    }
                }
            ]
        return fence, upd

    def claim_filter_update(self, n: int, how: str) -> tuple[dict[str, Any], Any]:
        ids = [self.claimable[(self.j + x) % len(self.claimable)] for x in range(n)]
        self.j += n
        s = self.state[ids[0]]  # claimed 4 at a time: they always share one state
        t = 2 if s == 1 else 1
        for i in ids:
            self.state[i] = t
        flt = {"_id": {"$in": ids}, "state": s, "owner": OWNER, "attempt": 1}
        worker = {"id": OWNER, "host": "vm", "pid": 1}
        if how == "pipeline":
            upd: Any = [
                {
                    "$set": {
                        "state": t,
                        "owner": OWNER,
                        "attempt": 1,
                        "book_time": "$$NOW",
                        "refresh_time": "$$NOW",
                        "lease_expires": {"$add": ["$$NOW", 30000]},
                        "lease_s": 30.0,
                        "worker": {"$literal": worker},
                        "version": {"$add": [{"$ifNull": ["$version", 0]}, 1]},
                        "mtime": "$$NOW",
                        "held": {"$ne": ["$_id", ids[0]]},
                    }
                }
            ]
        else:
            now = dt.datetime.now(dt.UTC)
            upd = {
                "$set": {
                    "state": t,
                    "owner": OWNER,
                    "attempt": 1,
                    "book_time": now,
                    "refresh_time": now,
                    "lease_expires": now + dt.timedelta(seconds=30),
                    "lease_s": 30.0,
                    "worker": worker,
                    "mtime": now,
                    "held": False,
                },
                "$inc": {"version": 1},
            }
        return flt, upd

    def op(self, kind: str) -> Callable[[], Any]:
        c = self.c
        if kind == "ping":
            return lambda: c.database.command("ping")
        if kind == "find_candidates":
            return lambda: list(c.find({"state": 0, "exp_key": EXP}, sort=[("tid", 1)], limit=8))
        if kind == "find_by_id":
            return lambda: list(c.find({"_id": self.toggle[3]}))
        if kind == "changed_since":
            return lambda: list(c.find({"exp_key": EXP, "mtime": {"$gte": self.t0}}))
        if kind == "changed_since_proj":
            proj = dict.fromkeys(
                ("spec", "result.history", "attempt_history", "error.traceback"), 0
            )
            return lambda: list(c.find({"exp_key": EXP, "mtime": {"$gte": self.t0}}, proj))
        if kind == "changed_since_lean":
            proj = ["state", "tid", "result", "mtime", "version", "misc"]
            return lambda: list(c.find({"exp_key": EXP, "mtime": {"$gte": self.t0}}, proj))
        if kind.startswith("end1_"):
            how = kind[5:]
            return lambda: c.update_one(*self.ending_filter_update(how))
        if kind.startswith("claim4_"):
            how = kind[7:]
            return lambda: c.update_many(*self.claim_filter_update(4, how))
        if kind == "bulk_4end_claim4":  # reserve_trials with 4 endings: one round trip

            def go() -> None:
                ops = [
                    pymongo.UpdateOne(*self.ending_filter_update("currentDate")) for _ in range(4)
                ]
                ops.append(pymongo.UpdateMany(*self.claim_filter_update(4, "pipeline")))
                c.bulk_write(ops, ordered=False)

            return go
        if kind == "sep_4end_claim4":  # the same five writes as five round trips

            def go2() -> None:
                for _ in range(4):
                    c.update_one(*self.ending_filter_update("currentDate"))
                c.update_many(*self.claim_filter_update(4, "pipeline"))

            return go2
        if kind in ("insert8_upsert", "insert8_plain", "insert8_upsert_id"):

            def ins() -> None:
                docs = [trial_doc(100000 + self.ins_marker * 8 + j, 0, self.big) for j in range(8)]
                self.ins_marker += 1
                if kind == "insert8_plain":
                    c.insert_many(docs, ordered=False)
                    return
                ops = []
                for d in docs:
                    key = {"_id": d["_id"], "exp_key": d["exp_key"], "tid": d["tid"]}
                    if kind == "insert8_upsert_id":
                        key = {"_id": d["_id"]}
                    fields = {k: v for k, v in d.items() if k not in key and k != "mtime"}
                    ops.append(
                        pymongo.UpdateOne(
                            key,
                            {"$currentDate": {"mtime": True}, "$setOnInsert": fields},
                            upsert=True,
                        )
                    )
                c.bulk_write(ops, ordered=False)

            return ins
        raise ValueError(kind)

    def cleanup_inserts(self) -> None:
        self.c.delete_many({"tid": {"$gte": 100000}})


OPS = [
    "ping",
    "find_by_id",
    "find_candidates",
    "changed_since",
    "changed_since_proj",
    "changed_since_lean",
    "end1_currentDate",
    "end1_set",
    "end1_set_noinc",
    "end1_pipeline",
    "claim4_pipeline",
    "claim4_set",
    "bulk_4end_claim4",
    "sep_4end_claim4",
    "insert8_upsert",
    "insert8_plain",
    "end1_idonly",
    "end1_idcond",
    "insert8_upsert_id",
]
#: statements per call (to report per-statement costs of batched calls too)
STATEMENTS = {
    "bulk_4end_claim4": 5,
    "sep_4end_claim4": 5,
    "insert8_upsert": 8,
    "insert8_plain": 8,
    "insert8_upsert_id": 8,
    "claim4_pipeline": 1,
    "claim4_set": 1,
}


def measure(daemon: Daemon, fx: Fixture, kind: str, k: int) -> tuple[float, float]:
    fn = fx.op(kind)
    fn()  # warm (plan caches, cursors)
    walls = []
    c0 = daemon.cpu_ns()
    for _ in range(k):
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
    c1 = daemon.cpu_ns()
    if kind.startswith("insert8"):
        fx.cleanup_inserts()
    return (c1 - c0) / k / 1e6, statistics.median(walls) * 1e3


def run_config(
    name: str, sync: bool, log_level: str, colls: list[str], ops: list[str], rounds: int, k: int
) -> dict[str, Any]:
    d = Daemon(sync, log_level, catalog_cache=name.endswith("_cache"))
    try:
        client = pymongo.MongoClient(d.uri)
        db = client["opcost"]
        fixtures = {cn: Fixture(db, cn) for cn in colls}
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for r in range(rounds):
            for cn in colls if r % 2 == 0 else list(reversed(colls)):
                for kind in ops if r % 2 == 0 else list(reversed(ops)):
                    if cn != "idx4" and kind in ("ping",):
                        continue
                    samples.setdefault((cn, kind), []).append(measure(d, fixtures[cn], kind, k))
        out = {}
        for (cn, kind), v in samples.items():
            out[f"{cn}/{kind}"] = {
                "server_ms": round(statistics.median(x[0] for x in v), 3),
                "server_ms_min": round(min(x[0] for x in v), 3),
                "wall_ms": round(statistics.median(x[1] for x in v), 3),
            }
        client.close()
        return out
    finally:
        d.stop()


CONFIGS = {
    "sync": (True, "INFO"),  # what EmbeddedServer (and so the benchmark) starts
    "nosync": (False, "INFO"),
    "sync_warn": (True, "WARNING"),
    "sync_cache": (True, "INFO"),  # with bench/secantusd_catalog_cache.py (experiment)
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--k", type=int, default=60)
    ap.add_argument("--configs", default="sync,nosync")
    ap.add_argument("--colls", default="idx4,idx1,idx0,big")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    for cfg in args.configs.split(","):
        sync, lvl = CONFIGS[cfg]
        results[cfg] = run_config(
            cfg, sync, lvl, args.colls.split(","), args.ops.split(","), args.rounds, args.k
        )
    results["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    # table: rows = op, columns = config/collection
    cols = [(cfg, cn) for cfg in args.configs.split(",") for cn in args.colls.split(",")]
    print("load before/after:", results["load_before"], results["load_after"])
    print("server CPU ms per call (median over rounds); wall ms in brackets")
    print("| op | " + " | ".join(f"{a}/{b}" for a, b in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for kind in args.ops.split(","):
        cells = []
        for cfg, cn in cols:
            v = results[cfg].get(f"{cn}/{kind}")
            cells.append("–" if v is None else f"{v['server_ms']:.2f} ({v['wall_ms']:.2f})")
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
