"""Issue 10, findings 9, 10 and 11 (security), against real servers and the real CLI: nothing is
imported because a database document names it, missing and wrong credentials give one line,
``worker --check`` proves read and write access, the first user of ``server --auth`` is created
from $HYPERFLEET_PASSWORD, a server beyond loopback without auth warns, URIs are redacted with
pymongo's parser, and TLS handshake failures are named as such."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from coordinator.errors import StoreUnavailable
from coordinator.store import connect, redact_uri
from tests.conftest import cli_env, hyperfleet

# -- finding 11: redaction and TLS ----------------------------------------------------------------

REDACTIONS = [
    ("mongodb://alice:p@ssW0rd@db.example:27017/hf", "mongodb://alice:***@db.example:27017/hf"),
    (
        "mongodb://alice:pa/ss?w@db:1/x?authSource=admin",
        "mongodb://alice:***@db:1/x?authSource=admin",
    ),
    (
        "mongodb://h:1/?tls=true&tlsCertificateKeyFilePassword=s3cret&appname=x",
        "mongodb://h:1/?tls=true&tlsCertificateKeyFilePassword=***&appname=x",
    ),
    (
        "mongodb://u:p%40w@h1:1,h2:2/?authMechanismProperties=AWS_SESSION_TOKEN:tok",
        "mongodb://u:***@h1:1,h2:2/?authMechanismProperties=***",
    ),
    (
        "mongodb+srv://bob:se:cret@cluster0.example.net/",
        "mongodb+srv://bob:***@cluster0.example.net/",
    ),
    # issue 14: an unescaped @ in the password before a '/', '?' or '#' that looks like a host
    (
        "mongodb://bob:hunter@2:x/y?z@127.0.0.1:27320/",
        "mongodb://bob:***@127.0.0.1:27320/",
    ),
    ("mongodb://bob:top@sec/ret?a@127.0.0.1:27320/", "mongodb://bob:***@127.0.0.1:27320/"),
    ("mongodb://al%20ice:p@ss:w/rd?#x@127.0.0.1:27320/", "mongodb://al%20ice:***@127.0.0.1:27320/"),
    ("mongodb://alice@h:1/", "mongodb://alice@h:1/"),
    ("mongodb://h:1/hf", "mongodb://h:1/hf"),
]


@pytest.mark.parametrize(("uri", "shown"), REDACTIONS, ids=[u for u, _ in REDACTIONS])
def test_redaction_hides_every_credential(uri: str, shown: str) -> None:
    """Finding 11: an unescaped @ in the password and *Password options never leak."""
    assert redact_uri(uri) == shown
    for secret in ("ssW0rd", "s3cret", "tok", "cret", "w@h1", "hunter", "top@sec", "ss:w/rd"):
        assert secret not in redact_uri(uri)


LEAKY = [
    "mongodb://bob:hunter@2:x/y?z@127.0.0.1:9/",
    "mongodb://bob:top@sec/ret?a@127.0.0.1:9/",
    "mongodb://al%20ice:p@ss:w/rd?#x@127.0.0.1:9/",
]


@pytest.mark.parametrize("uri", LEAKY)
def test_status_never_prints_a_password_with_an_unescaped_at(uri: str) -> None:
    """Issue 14: `status` printed `bob:***@2:x/y?z@...`, i.e. the rest of the password, for a
    password holding '@' before something that looks like a host; also from $HYPERFLEET_MONGO."""
    for env in ({}, {"HYPERFLEET_MONGO": uri}):
        args = ("status",) if env else ("status", "--mongo", uri)
        result = hyperfleet(*args, env=cli_env(HYPERFLEET_OUTAGE_S="0", **env), timeout=60)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert "***@127.0.0.1:9/" in result.stderr, result.stderr
        for secret in ("hunter", "2:x/y", "top", "sec/ret", "p@ss", "ss:w/rd", "#x"):
            assert secret not in result.stderr + result.stdout, (secret, result.stderr)


def test_tls_handshake_failure_is_named_tls() -> None:
    """Finding 11: a TLS handshake that fails is a TLS message, not "is the server running?".
    The peer is a bare socket that hangs up on every connection (a fake: a real TLS server
    would need a certificate chain; the error pymongo raises is the same kind)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        with pytest.raises(StoreUnavailable, match="TLS handshake with MongoDB") as caught:
            connect(f"mongodb://127.0.0.1:{port}/?tls=true", timeout_s=2)
    finally:
        listener.close()
    assert "is the server running" not in str(caught.value)


# -- finding 10: auth ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`hyperfleet server --auth --create-user alice` (password from $HYPERFLEET_PASSWORD):
    yields the URI without credentials and the one with them."""
    db = tmp_path_factory.mktemp("authdb") / "db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "server", "--port", "0", "--db-path", str(db)]
        + ["--auth", "--create-user", "alice", "--no-sync"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(HYPERFLEET_PASSWORD="s3cret pw"),
    )
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        pytest.fail(f"server --auth --create-user did not start: {line}{proc.stderr.read()}")
    assert "alice:PASSWORD@" in line and "s3cret" not in line
    port = line.split("127.0.0.1:")[1].split("/")[0]
    yield (
        f"mongodb://127.0.0.1:{port}/?authSource=admin",
        f"mongodb://alice:s3cret%20pw@127.0.0.1:{port}/?authSource=admin",
    )
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


COMMANDS = [
    ("status",),
    ("top", "--exp-key", "x"),
    ("search", "quadratic", "--max-evals", "1", "--no-progress"),
    ("worker", "--max-trials", "1"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a[:2]) for a in COMMANDS])
def test_missing_and_wrong_credentials_give_the_same_one_line(auth_server, args) -> None:
    """Finding 10: `status`, `top`, `search`, `worker` (and `worker --check`, which used to say
    ok) against an --auth server without credentials or with a wrong password: the same one
    line, no pymongo traceback."""
    bare, _ = auth_server
    wrong = bare.replace("mongodb://", "mongodb://alice:nope@")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "coordinator", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(HYPERFLEET_MONGO=uri),
        )
        for uri in (bare, wrong)
    ]
    lines = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        lines.append(one_line_refusal(result).replace("alice:***@", ""))
    assert lines[0] == lines[1]
    assert "refused access (missing or wrong credentials" in lines[0]
    assert "nope" not in lines[1]


def test_worker_check_proves_read_and_write(auth_server) -> None:
    """Finding 10: without credentials `worker --check` fails in one line (it used to say ok:
    ping needs no credentials); with the bootstrapped user it reads and writes, and leaves no
    probe row behind."""
    bare, good = auth_server
    refused = hyperfleet("worker", "--check", env=cli_env(HYPERFLEET_MONGO=bare), timeout=60)
    assert "refused access" in one_line_refusal(refused)
    result = hyperfleet("worker", "--check", env=cli_env(HYPERFLEET_MONGO=good), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "readable and writable" in result.stdout and "s3cret" not in result.stdout
    assert connect(good).list_workers(alive_only=False) == []


def test_create_user_never_takes_the_password_from_argv(tmp_path) -> None:
    """Finding 10: without $HYPERFLEET_PASSWORD and no terminal, --create-user refuses in one
    line (it never reads a password from the command line)."""
    result = hyperfleet(
        "server", "--auth", "--create-user", "bob", "--db-path", str(tmp_path / "db"), timeout=60
    )
    assert result.returncode != 0
    assert "HYPERFLEET_PASSWORD" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_server_beyond_loopback_without_auth_warns(tmp_path, host: str) -> None:
    """Finding 10: `server --host 0.0.0.0` without --auth warns on stderr. Issue 22, item 10:
    with the IPv6 wildcard `::` the readiness ping went to the unbracketed "mongodb://:::P/":
    a minute's wait, then "did not answer ping", and never the warning."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "server", "--host", host, "--port", "0"]
        + ["--db-path", ":memory:"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(TMPDIR=str(tmp_path)),
    )
    try:
        ready = proc.stdout.readline()
        assert "ready" in ready
        port = int(ready.split("mongodb://")[1].split("/")[0].rsplit(":", 1)[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert f"warning: listening on {host} without --auth" in err
    # issue 14: with --port 0 the warning named "port 0"; it names the port really listened on
    assert "port 0 " not in err and f"port {port} can read" in err, err


# -- finding 9: no code chosen by the database ---------------------------------------------------


def test_best_evaluate_never_imports_spaces_source_from_the_database(
    server, store, tmp_path
) -> None:
    """Finding 9: an experiment document whose spaces_source names a file: `best --evaluate`
    does not import it (it used to); without --spaces it refuses in one line."""
    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n")
    store.create_experiment(
        {"_id": "planted", "space": "planted_space", "spaces_source": str(evil), "status": "done"}
    )
    result = hyperfleet(
        "best",
        "--exp-key",
        "planted",
        "--evaluate",
        env=cli_env(HYPERFLEET_MONGO=server.uri, HYPERFLEET_DB=store.db_name),
        timeout=60,
    )
    assert not marker.exists(), "best --evaluate imported a file named by the database"
    line = one_line_refusal(result)
    assert "--spaces PATH" in line and "planted_space" in line


def test_the_evaluated_space_never_comes_from_the_experiment_document(tmp_path) -> None:
    """Finding 9, at the function `best --evaluate` uses to find the space: the file named by
    ``spaces_source`` is not imported (it used to be, before any check)."""
    from coordinator.cli.best import _keras_space
    from coordinator.errors import SpaceError

    marker = tmp_path / "imported"
    evil = tmp_path / "evil2.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n")
    exp = {"_id": "planted", "space": "planted_space2", "spaces_source": str(evil)}
    with pytest.raises(SpaceError, match="--spaces PATH"):
        _keras_space(exp)
    assert not marker.exists()


def test_create_user_prints_a_uri_with_the_user_name_encoded(tmp_path) -> None:
    """Issue 14: `server --auth --create-user 'al ice'` printed mongodb://al ice:PASSWORD@...,
    a URI pymongo refuses; the name is now URL-encoded, and the printed URI works."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "server", "--auth", "--create-user", "al ice"]
        + ["--port", "0", "--db-path", str(tmp_path / "db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(TMPDIR=str(tmp_path), HYPERFLEET_PASSWORD="pw d@1"),
    )
    try:
        ready = proc.stdout.readline()
        assert "mongodb://al+ice:PASSWORD@127.0.0.1:" in ready, ready
        uri = ready.split()[3].replace("PASSWORD", "pw+d%401")
        assert connect(uri, "hf").list_workers(alive_only=False) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
