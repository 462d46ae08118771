"""cProfile of SecantusDB's command handling for one hyperfleet hot-path operation at a time
(issue 19 diagnosis): an in-process ``SecantusDBServer`` (standalone, ``:memory:``) whose
``dispatch`` runs under one ``cProfile.Profile``; the operations come from
``bench/server_op_costs.py``'s fixture (500 trial documents, the store's four indexes).

    .venv/bin/python bench/server_cprofile.py [OP ...] [--k 200] [--colls idx4] [--top 25]

Prints, per operation, the profile's top functions by cumulative time, and the calls per
operation of a few functions that show where the time goes (index catalog reads, WiredTiger
cursor opens, commits, BSON decodes).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

import pymongo

sys.path.insert(0, str(Path(__file__).resolve().parent))

import secantus.server as srv  # noqa: E402
from secantus.server import SecantusDBServer  # noqa: E402
from server_op_costs import Fixture  # noqa: E402

PROF = cProfile.Profile()
_orig_dispatch = srv.dispatch


def _profiled_dispatch(body, ctx):  # type: ignore[no-untyped-def]
    return PROF.runcall(_orig_dispatch, body, ctx)


COUNT = (
    "_iter_indexes",
    "_all_indexes",
    "_partial_filters",
    "_index_options_map",
    "_write_index_entries",
    "_delete_index_entries",
    "open_cursor",
    "commit_transaction",
    "begin_transaction",
    "decode",
    "encode",
    "get_collection_options",
    "_coll_options",
    "_candidates_iter",
    "_unique_conflict",
    "_maybe_record_profile",
    "get_profile",
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "ops",
        nargs="*",
        default=[
            "end1_currentDate",
            "claim4_pipeline",
            "find_candidates",
            "insert8_upsert",
            "insert8_plain",
            "changed_since",
            "ping",
        ],
    )
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--coll", default="idx4")
    ap.add_argument("--top", type=int, default=22)
    args = ap.parse_args()
    srv.dispatch = _profiled_dispatch
    server = SecantusDBServer(port=0, storage_path=":memory:", replica_set_name=None)
    server.start()
    try:
        client = pymongo.MongoClient(server.uri)
        fx = Fixture(client["opcost"], args.coll)
        for kind in args.ops:
            fn = fx.op(kind)
            fn()
            global_prof = cProfile.Profile()
            globals()["PROF"] = global_prof  # _profiled_dispatch reads it per call
            for _ in range(args.k):
                fn()
            if kind.startswith("insert8"):
                fx.cleanup_inserts()
            st = pstats.Stats(global_prof)
            total = st.total_tt
            print(
                f"\n=== {kind} ({args.coll}): {total / args.k * 1000:.2f} ms profiled per call "
                "(cProfile inflates; compare shares)"
            )
            counts = {}
            for (file, _line, fname), (_cc, nc, _tt, ct, _callers) in st.stats.items():
                if fname in COUNT or fname.endswith(tuple("." + c for c in COUNT)):
                    counts[f"{fname} ({Path(file).name})"] = (nc / args.k, ct / args.k * 1000)
            for name, (n, ms) in sorted(counts.items(), key=lambda x: -x[1][1]):
                print(f"  {n:7.1f} calls/op  {ms:6.3f} ms/op cum  {name}")
            buf = io.StringIO()
            pstats.Stats(global_prof, stream=buf).sort_stats("cumulative").print_stats(args.top)
            lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()][-args.top :]
            print("\n".join(lines))
        client.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
