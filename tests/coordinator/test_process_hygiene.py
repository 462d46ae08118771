"""Issue 10, finding 6 (process hygiene), with real processes killed for real: a trial child dies
with its SIGKILLed worker (no BrokenPipe traceback), the embedded ``secantusd-py`` dies with a
SIGKILLed ``hyperfleet server``, a restart works (or names the process holding the database), and
no ``hyperfleet-server-*`` folder is left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import connect
from tests.conftest import (
    TEST_SPACES,
    cli_env,
    process_gone,
    queue_trials,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def trial_child(worker_pid: int) -> int | None:
    for pid in children(worker_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            return pid
    return None


def test_trial_child_dies_with_its_sigkilled_worker(server, db_name, tmp_path) -> None:
    """Finding 6: SIGKILL a worker mid-trial: its trial child is gone within seconds (it used to
    run the whole trial for nobody, then print a BrokenPipe traceback)."""
    store = connect(server.uri, db_name)
    # a 30 s objective: the child being gone within 15 s of the kill (generous for a loaded
    # machine) still means it did not run the trial to its end for nobody
    queue_trials(store, 1, space="whoami", settings={"sleep": 30.0})
    log = tmp_path / "w.log"
    worker = start_worker(server.uri, db_name, "--spaces", TEST_SPACES, "--no-warm", log=log)
    try:
        wait_for(lambda: store.trials("exp", [TrialState.RUNNING]), 60, what="a running trial")
        child = wait_for(lambda: trial_child(worker.pid), 10, what="the trial child")
        time.sleep(0.5)  # inside the objective now
        worker.kill()
        worker.wait(10)
        wait_for(
            lambda: process_gone(child), 15, what=f"trial child {child} to die with its worker"
        )
        # gone before its objective returned, it never writes to the dead worker's pipe: the log
        # is final (no need to sit out the 30 s objective for a BrokenPipe traceback)
        assert "Traceback" not in log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()


def server_cli(db_path: Path, tmp: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator", "server", "--port", "0", "--db-path", str(db_path)]
        + list(extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(TMPDIR=str(tmp)),
    )


def wait_ready(proc: subprocess.Popen[str]) -> str:
    line = proc.stdout.readline()
    assert "hyperfleet server ready" in line, line + proc.stderr.read()
    return re.search(r"(mongodb://\S+)", line)[1]


def test_sigkilled_server_takes_secantusd_along_and_restarts_cleanly(tmp_path) -> None:
    """Finding 6: SIGKILL `hyperfleet server`: secantusd-py goes too (it used to stay, holding
    the database, and a restart printed a false "ready"); the restart works and sweeps the dead
    server's temporary folder; SIGTERM then removes the new one."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    db = tmp_path / "db"
    first = server_cli(db, tmp)
    try:
        wait_ready(first)
        daemons = children(first.pid)
        assert daemons and len(list(tmp.glob("hyperfleet-server-*"))) == 1
        first.kill()
        first.wait(10)
        for pid in daemons:
            # its parent-death signal is SIGKILL: SecantusDB once hung for good in its SIGTERM
            # shutdown here (CI, stop 10), holding the database
            wait_for(lambda pid=pid: process_gone(pid), 15, what=f"secantusd-py {pid} to stop")
        second = server_cli(db, tmp)
        try:
            uri = wait_ready(second)
            assert connect(uri).list_experiments() == []
            left = list(tmp.glob("hyperfleet-server-*"))
            assert len(left) == 1, f"the killed server's folder was not swept: {left}"
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
            assert list(tmp.glob("hyperfleet-server-*")) == []
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        if first.poll() is None:
            first.kill()


def test_locked_db_path_names_the_holder_and_never_says_ready(tmp_path) -> None:
    """Finding 6: a database directory held by a running daemon: one line naming its pid,
    exit 1, no "ready" line, nothing started, no temporary folder left."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with EmbeddedServer(tmp_path / "db", sync=False) as holder:
        proc = server_cli(tmp_path / "db", tmp)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert "ready" not in out
        assert f"in use by secantusd-py pid {holder.process.pid}" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert list(tmp.glob("hyperfleet-server-*")) == []


def test_embedded_server_removes_its_folder(tmp_path) -> None:
    """Finding 6: EmbeddedServer.stop() removes its hyperfleet-server-* folder."""
    srv = EmbeddedServer(":memory:", sync=False).start()
    workdir = srv.log_path.parent
    assert workdir.name.startswith("hyperfleet-server-") and workdir.is_dir()
    srv.stop()
    assert not workdir.exists()
    assert os.path.basename(str(workdir)).startswith("hyperfleet-server-")
