"""Issue 10, finding 12 (bad input): one line and a non-zero exit before anything is started, and
a word where a search or a worker used to wait in silence."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from coordinator.cli import main
from coordinator.cli.options import check_exp_key
from coordinator.errors import ConfigError
from tests.conftest import cli_env, hyperfleet, queue_trials, start_worker, stop_all, wait_for

UNREACHABLE = "mongodb://127.0.0.1:9/"  # a command that got as far as connecting would say so


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["server", "local"])
def test_unusable_db_path_is_one_line_before_anything_starts(command: str, tmp_path) -> None:
    """Finding 12: `--db-path /proc/nope` (server, local) used to be a traceback."""
    args = [command, "--db-path", "/proc/nope"] + (["quadratic"] if command == "local" else [])
    result = hyperfleet(*args, cwd=tmp_path, timeout=60)
    line = one_line(result)
    assert "/proc/nope" in line and "--db-path" in line
    assert "workers (" not in result.stderr and not (tmp_path / ".hyperfleet").exists()


BAD_KEYS = ["../../X", "a/b", "..", "a\\b", " lead", ""]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_exp_keys_are_refused_by_the_one_validator(key: str) -> None:
    """Finding 12: exp keys become file names; one validator refuses separators and '..'."""
    with pytest.raises(ConfigError, match="no '/' or '..'"):
        check_exp_key(key)
    assert check_exp_key("mnist_mlp-20261127-101500") == "mnist_mlp-20261127-101500"


COMMANDS = [
    ["local", "quadratic", "--max-evals", "1"],
    ["search", "quadratic", "--mongo", UNREACHABLE],
    ["worker", "--mongo", UNREACHABLE],
    ["status", "--mongo", UNREACHABLE],
    ["export", "--mongo", UNREACHABLE],
    ["cancel", "--mongo", UNREACHABLE],
]


@pytest.mark.parametrize("key", ["../../X", "a/b"])
@pytest.mark.parametrize("args", COMMANDS, ids=[a[0] for a in COMMANDS])
def test_every_command_refuses_a_path_like_exp_key(args, key, tmp_path, monkeypatch) -> None:
    """Finding 12: `--exp-key ../../X` made `local` write a log file outside its folder, and
    `--exp-key a/b` was a traceback; every command now refuses them (also from
    $HYPERFLEET_EXP_KEY) before it starts anything."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for how in ("argv", "env"):
        argv = [*args, "--exp-key", key] if how == "argv" else args
        env = {"HYPERFLEET_EXP_KEY": key} if how == "env" else {}
        result = runner.invoke(main, argv, env=env)
        assert result.exit_code == 2, (how, result.output)
        assert "Invalid value for '--exp-key'" in result.output and "no '/'" in result.output
    assert list(tmp_path.iterdir()) in ([], [tmp_path / ".hyperfleet"])
    assert not (tmp_path / ".hyperfleet" / "logs").exists()


def test_export_refuses_an_unknown_extension_before_connecting(tmp_path) -> None:
    """Finding 12: `export -o file.xyz` used to write CSV silently; --format still wins."""
    started = time.monotonic()
    result = hyperfleet(
        "export", "--mongo", UNREACHABLE, "--exp-key", "k", "-o", str(tmp_path / "f.xyz")
    )
    line = one_line(result)
    assert "f.xyz" in line and "--format" in line
    assert time.monotonic() - started < 10 and not (tmp_path / "f.xyz").exists()
    runner = CliRunner()
    ok = runner.invoke(
        main, ["export", "--mongo", UNREACHABLE, "--exp-key", "k", "-o", "f.xyz", "--format", "csv"]
    )
    assert "cannot reach MongoDB" in ok.output  # got past the check: it tried to connect


def test_local_max_evals_zero_is_refused_before_starting(tmp_path) -> None:
    """Finding 12: `local --max-evals 0` used to start the server and the workers first."""
    result = hyperfleet(
        "local", "quadratic", "--max-evals", "0", "--db-path", str(tmp_path / "db"), cwd=tmp_path
    )
    line = one_line(result)
    assert "'--max-evals': 0 is not in the range x>=1" in line
    assert "workers (" not in result.stderr
    assert not list((tmp_path / "db").glob("WiredTiger*"))


def test_search_without_a_live_worker_says_so(server, db_name) -> None:
    """Finding 12: a search with no live worker, stderr not a terminal, used to wait without a
    word; it now logs a WARNING after a few seconds."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "search", "quadratic", "--max-evals", "2"]
        + ["--mongo", server.uri, "--db", db_name, "--exp-key", "lonely"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        deadline = time.monotonic() + 40
        seen = ""
        while time.monotonic() < deadline and "no live worker serves" not in seen:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
    finally:
        proc.kill()
        proc.wait()
    assert "no live worker serves 'lonely'" in seen, seen
    assert "hyperfleet worker --exp-key lonely" in seen


def test_worker_without_trust_pickled_says_it_ignores_pickled_trials(
    server, store, db_name, tmp_path: Path
) -> None:
    """Finding 12: a worker without --trust-pickled skipped plain-fmin trials without a word at
    any level; it now logs one WARNING per experiment, naming --trust-pickled."""
    queue_trials(store, 2, exp_key="plainfmin", space=None)
    log = tmp_path / "w.log"
    worker = start_worker(
        server.uri, db_name, "--idle-timeout", "6", "--poll", "0.05", "--no-warm", log=log
    )
    try:
        wait_for(lambda: "--trust-pickled" in log.read_text(), 30, what="the warning")
        assert worker.wait(30) == 0
    finally:
        stop_all([worker])
    text = log.read_text()
    assert text.count("ignoring the queued trials of experiment 'plainfmin'") == 1, text
    assert "WARNING" in text
