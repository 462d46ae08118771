"""Fixtures of the dashboard tests: synthetic trials written through the store, the app in-process
(Starlette's TestClient, for the fast tier) and the real ``hyperfleet dashboard`` process (for
the browser tier)."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.states import TrialState
from coordinator.store import TrialStore
from tests.conftest import cli_env, wait_for

EXP = "exp-dash"
URL_RE = re.compile(r"hyperfleet dashboard: (http://\S+)")


def trial_doc(tid: int, state: TrialState, exp_key: str = EXP, **extra: Any) -> dict[str, Any]:
    """A trial document as hyperopt and a worker leave it (what the pages read)."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    doc: dict[str, Any] = {
        "tid": tid,
        "exp_key": exp_key,
        "space": "quadratic",
        "state": int(state),
        "owner": None,
        "spec": None,
        "misc": {"tid": tid, "vals": {"x": [0.1 * tid]}, "idxs": {"x": [tid]}, "cmd": None},
        "result": {"status": "new"},
        "version": 0,
        "book_time": None,
        "refresh_time": None,
        "attempt": 0,
        "attempts": 0,
    }
    if state != TrialState.NEW:
        doc.update(
            params={"x": 0.1 * tid, "opt": {"name": "adam", "lr": 0.001 * (tid + 1)}},
            worker={"id": "host-a:1:w", "host": "host-a", "pid": 1, "gpu": "0"},
            book_time=now - dt.timedelta(seconds=60 - tid),
            attempt=1,
            epochs=[
                {"epoch": e + 1, "loss": 1.0 / (e + 1) + tid, "val_loss": 1.5 / (e + 1) + tid}
                for e in range(5)
            ],
        )
    if state == TrialState.DONE:
        doc.update(result={"status": "ok", "loss": float(tid)}, ended=now, duration_s=3.0)
    if state == TrialState.ERROR:
        doc.update(
            result={"status": "fail", "failure": "ValueError"},
            ended=now,
            error={"type": "ValueError", "message": "bad x", "traceback": "Traceback ...\n"},
        )
    doc.update(extra)
    return doc


def make_experiment(
    store: TrialStore, docs: list[dict[str, Any]], exp_key: str = EXP, **fields: Any
) -> None:
    store.create_experiment(
        {
            "_id": exp_key,
            "space": "quadratic",
            "algo": "tpe",
            "status": "running",
            "max_evals": 20,
            "settings": {},
            **fields,
        }
    )
    if docs:
        store.insert_trials(docs)


@pytest.fixture
def dash_store(store: TrialStore) -> Iterator[TrialStore]:
    yield store
    store.drop_database()


def start_dashboard(
    uri: str, db: str, *args: str, log: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    """``hyperfleet dashboard --port 0`` in a fresh process; returns it and its printed URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator",
            "dashboard",
            "--mongo",
            uri,
            "--db",
            db,
            "--port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=open(log, "w") if log else subprocess.DEVNULL,  # noqa: SIM115
        text=True,
        env=cli_env(),
    )
    assert proc.stdout is not None
    line = wait_for(proc.stdout.readline, timeout=30, what="the dashboard's URL")
    match = URL_RE.search(line)
    assert match, line
    return proc, match.group(1)
