"""Issue 24, item 7: ``hyperfleet server --auth --create-user NAME`` creates the first user without
any window another local user could use. It used to start an unauthenticated server on a random
loopback port while it made the user; on a shared login node anyone could race into it (and
create their own root user). Now the user is written into the storage directly and no socket is
bound until the ``--auth`` server starts.

How it is seen: a ``sitecustomize`` on ``PYTHONPATH`` installs an audit hook in every Python
process of the bootstrap (the CLI, and any daemon or helper it starts) that records each
``socket.bind`` and ``socket.listen``."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coordinator.errors import ServerStartError
from coordinator.server import EmbeddedServer, create_first_user
from coordinator.store import connect
from tests.conftest import cli_env, hyperfleet


def _spy(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose Python processes log their socket binds to the returned file."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    log = tmp_path / "binds.log"
    (hooks / "sitecustomize.py").write_text(
        textwrap.dedent(f"""
        import os, sys
        def _hook(event, args):
            if event in ("socket.bind", "socket.listen"):
                with open({str(log)!r}, "a") as f:
                    f.write(f"{{os.getpid()}} {{event}} {{args[1:]!r}}\\n")
        sys.addaudithook(_hook)
        """)
    )
    return cli_env(PYTHONPATH=str(hooks), TMPDIR=str(tmp_path)), log


def test_bootstrap_binds_no_socket(tmp_path: Path) -> None:
    env, log = _spy(tmp_path)
    db = tmp_path / "db"
    script = (
        "from coordinator.cli.server import bootstrap_user; "
        f"bootstrap_user({str(db)!r}, 'alice', 's3cret pw')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    binds = log.read_text() if log.exists() else ""
    assert binds == "", f"the bootstrap bound sockets:\n{binds}"
    # the user works on the --auth server started afterwards, and only with its password
    with EmbeddedServer(db, auth=True, sync=False) as srv:
        good = srv.uri.replace("mongodb://", "mongodb://alice:s3cret%20pw@") + "?authSource=admin"
        store = connect(good, "hf")
        assert store.list_workers(alive_only=False) == []
        store.close()
        bad = srv.uri.replace("mongodb://", "mongodb://alice:wrong@") + "?authSource=admin"
        done = hyperfleet("status", "--mongo", bad, "--db", "hf", timeout=60)
        assert done.returncode != 0 and "Traceback" not in done.stderr


def test_the_cli_binds_only_its_auth_server(tmp_path: Path) -> None:
    """The whole command: the one socket bound is the --auth daemon's, on the asked port."""
    env, log = _spy(tmp_path)
    env["HYPERFLEET_PASSWORD"] = "pw"
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "server", "--auth", "--create-user", "alice"]
        + ["--port", "0", "--db-path", str(tmp_path / "db"), "--no-sync"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        ready = proc.stdout.readline()
        assert "alice:PASSWORD@" in ready, ready + proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    binds = [line for line in log.read_text().splitlines() if "socket.bind" in line]
    # one daemon, one bind (its address, port 0 for "any"): no earlier bootstrap server
    pids = {line.split()[0] for line in binds}
    assert len(pids) == 1, binds


def test_an_existing_user_is_one_clear_error(tmp_path: Path) -> None:
    create_first_user(tmp_path / "db", "alice", "pw")
    with pytest.raises(ServerStartError, match="already exists"):
        create_first_user(tmp_path / "db", "alice", "other")
