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
#: the printed line: the base URL, then ``?token=SECRET``
URL_RE = re.compile(r"hyperfleet dashboard: (http://\S+/)\?token=(\S+)")


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


class Started:
    """A ``hyperfleet dashboard`` process: its base URL (ending in ``/``) and its secret."""

    def __init__(self, proc: subprocess.Popen[str], url: str, token: str) -> None:
        self.proc, self.url, self.token = proc, url, token

    @property
    def login(self) -> str:
        """The login URL it printed."""
        return f"{self.url}?token={self.token}"

    def get(self, path: str, timeout: float = 15) -> tuple[int, str]:
        """GET ``path`` with the secret as a bearer token: status and body."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


def start(
    uri: str, db: str, *args: str, log: Path | None = None, token_file: Path | None = None
) -> Started:
    """``hyperfleet dashboard --port 0`` in a fresh process (its secret in ``token_file``, or a
    fresh file in a new temporary folder)."""
    if token_file is None:
        import tempfile

        token_file = Path(tempfile.mkdtemp(prefix="hf-dash-")) / "token"
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
            "--token-file",
            str(token_file),
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
    return Started(proc, match.group(1), match.group(2))


def start_dashboard(
    uri: str, db: str, *args: str, log: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    """:func:`start`, returning the process and its base URL."""
    started = start(uri, db, *args, log=log)
    return started.proc, started.url
