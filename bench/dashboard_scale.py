"""How the dashboard scales: an experiment of N trials x E epochs on the embedded server.

    .venv/bin/python bench/dashboard_scale.py [--trials 10000] [--epochs 20] [--no-browser]

Inserts synthetic trials through the store (mostly DONE with E epochs each, some ERROR, RUNNING
and NEW), then times, in-process (Starlette's TestClient, the real app and server):

* the first look at the experiment (the dashboard reads every trial once into its cache);
* the experiment page and its first poll (every trial as JSON) from the warm cache;
* a live refresh with nothing changed and with 10 and 100 trials changed by real store writes
  (reserve, an epoch, finish): the app's own time (``Server-Timing``) and the request's;
* the experiments and workers pages;
* with chromium and playwright here, the page in a real browser until every trial is drawn.

Prints a Markdown table (docs/benchmarks.md keeps the latest).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.dashboard.app import create_app  # noqa: E402
from coordinator.dashboard.cache import OVERLAP_S  # noqa: E402
from coordinator.server import EmbeddedServer  # noqa: E402
from coordinator.store import TrialStore, connect  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

EXP = "scale"
STATES = [2] * 90 + [3] * 4 + [1] * 2 + [0] * 4  # DONE, ERROR, RUNNING, NEW (percent)


def synthetic(n: int, epochs: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    start = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=3)
    docs = []
    for tid in range(n):
        state = STATES[tid % len(STATES)]
        lr = 10 ** rng.uniform(-4, -1)
        units = rng.choice([32, 64, 128, 256])
        doc: dict[str, Any] = {
            "tid": tid,
            "exp_key": EXP,
            "space": "mnist_mlp",
            "state": state,
            "owner": None,
            "spec": None,
            "misc": {"tid": tid, "cmd": None, "idxs": {"lr": [tid]}, "vals": {"lr": [lr]}},
            "result": {"status": "new"},
            "version": 0,
            "attempt": 0,
            "attempts": 0,
        }
        if state != 0:
            booked = start + dt.timedelta(seconds=tid)
            final = 0.05 + abs(rng.gauss(0, 0.2)) + 0.02 * abs(units - 128) / 128
            doc.update(
                params={"lr": lr, "layers": [{"units": units}], "opt": {"name": "adam"}},
                worker={"id": f"gpu-host:{tid % 8}:w", "host": "gpu-host", "gpu": str(tid % 8)},
                book_time=booked,
                attempt=1,
                epochs=[
                    {
                        "epoch": e + 1,
                        "loss": final + 1.0 / (e + 1),
                        "val_loss": final + 1.2 / (e + 1),
                        "accuracy": 1 - final / (e + 1),
                        "val_accuracy": 1 - 1.1 * final / (e + 1),
                    }
                    for e in range(epochs if state != 1 else epochs // 2)
                ],
            )
        if state == 1:
            doc["owner"] = f"gpu-host:{tid % 8}:w"
        if state == 2:
            doc.update(
                result={"status": "ok", "loss": final, "epochs_run": epochs},
                ended=booked + dt.timedelta(seconds=8),
                duration_s=8.0,
            )
        if state == 3:
            doc.update(
                result={"status": "fail", "failure": "ValueError"},
                ended=booked + dt.timedelta(seconds=2),
                error={"type": "ValueError", "message": "diverged", "traceback": "Traceback\n"},
            )
        docs.append(doc)
    return docs


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def app_ms(response: Any) -> float:
    return float(response.headers["server-timing"].split("dur=")[1])


def change(store: TrialStore, n: int) -> None:
    """``n`` real trial changes through the store: reserve, report an epoch, finish."""
    for i in range(n):
        lease = store.reserve_trial(f"bench-{i}", exp_key=EXP)
        if lease is None:
            return
        store.record_epoch(lease, {"epoch": 1, "loss": 0.5, "val_loss": 0.6})
        store.finish(lease, {"status": "ok", "loss": 0.5}, {})


def browser_ms(app: Any, n: int) -> float | None:
    """Milliseconds from navigation until the page has drawn all ``n`` trials (chromium)."""
    if not Path("/usr/bin/chromium").exists():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    import uvicorn

    from coordinator.dashboard.serve import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/exp?key={EXP}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
            page.goto(url)  # warm-up (fonts, the browser's own caches)
            page.wait_for_function(f"Number(document.body.dataset.trials) === {n}")
            started = time.perf_counter()
            page.goto(url)
            page.wait_for_function(f"Number(document.body.dataset.trials) === {n}", timeout=60_000)
            took = (time.perf_counter() - started) * 1000
            browser.close()
            return took
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()

    rows: list[tuple[str, str, str]] = []
    with EmbeddedServer(":memory:", sync=False) as srv:
        store = connect(srv.uri, "dashboard_bench")
        store.create_experiment(
            {
                "_id": EXP,
                "space": "mnist_mlp",
                "algo": "tpe",
                "status": "running",
                "max_evals": args.trials + 1000,
                "settings": {},
            }
        )
        store.create_jobs_indexes()  # as a search does when it starts: (exp_key, mtime) among them
        docs = synthetic(args.trials, args.epochs)
        ms, _ = timed(
            lambda: [store.insert_trials(docs[i : i + 500]) for i in range(0, len(docs), 500)]
        )
        print(
            f"inserted {args.trials} trials x {args.epochs} epochs in {ms / 1000:.1f} s",
            file=sys.stderr,
        )
        # writes this recent are inside every refresh's overlap window: start after it, as a
        # dashboard opened on a running search would (only the last seconds' changes re-read)
        time.sleep(OVERLAP_S + 0.5)
        app = create_app(store, safe_uri=srv.uri, min_interval_s=0.0)
        client = TestClient(app)
        exp_url = f"/exp?key={EXP}"
        api = f"/api/trials?key={EXP}"

        ms, r = timed(lambda: client.get(exp_url))
        rows.append(("experiment page, first look (reads every trial once)", f"{ms:.0f}", ""))
        ms, r = timed(lambda: client.get(f"{api}&since=0"))
        full = r.json()
        size = len(r.content)
        rows.append(
            (
                "first poll: every trial as JSON (warm cache)",
                f"{ms:.0f}",
                f"app {app_ms(r):.0f} ms; {size / 1e6:.1f} MB, gzip on the wire",
            )
        )
        page = [timed(lambda: client.get(exp_url))[0] for _ in range(3)]
        rows.append(
            ("experiment page HTML (warm cache), median of 3", f"{statistics.median(page):.0f}", "")
        )
        seq, token = full["seq"], full["cache"]

        def poll() -> Any:
            return client.get(f"{api}&since={seq}&cache={token}")

        idle = [timed(poll) for _ in range(10)]
        rows.append(
            (
                "live refresh, nothing changed, median of 10",
                f"{statistics.median(t for t, _ in idle):.0f}",
                f"app {statistics.median(app_ms(r) for _, r in idle):.0f} ms",
            )
        )
        for n in (10, 100):
            change(store, n)
            ms, r = timed(poll)
            body = r.json()
            rows.append(
                (
                    f"live refresh after {n} trials changed",
                    f"{ms:.0f}",
                    f"app {app_ms(r):.0f} ms; {len(body['trials'])} trials sent",
                )
            )
            seq = body["seq"]
        ms, r = timed(lambda: client.get("/"))
        rows.append(("experiments page", f"{ms:.0f}", ""))
        ms, r = timed(lambda: client.get("/workers"))
        rows.append(("workers page (timeline)", f"{ms:.0f}", ""))
        ms, r = timed(lambda: client.get(f"/trial?key={EXP}&tid=5"))
        rows.append(("trial page", f"{ms:.0f}", ""))
        if not args.no_browser:
            took = browser_ms(app, len(full["trials"]))
            if took is not None:
                rows.append(
                    (
                        "in chromium: navigation until every trial is drawn",
                        f"{took:.0f}",
                        "HTML + poll + 4 charts + table",
                    )
                )
        store.close()

    print(f"\n{args.trials} trials x {args.epochs} epochs\n")
    print("| step | ms | notes |\n|---|---:|---|")
    for step, ms_text, note in rows:
        print(f"| {step} | {ms_text} | {note} |")


if __name__ == "__main__":
    main()
