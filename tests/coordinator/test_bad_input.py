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
from coordinator.store import connect
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
    assert " each), results in" not in result.stderr and not (tmp_path / ".hyperfleet").exists()


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
    assert " each), results in" not in result.stderr
    assert not list((tmp_path / "db").glob("WiredTiger*"))


def _stderr_until(args: list[str], needle: str, timeout: float = 40) -> str:
    """Run ``args`` and read its stderr until ``needle`` shows (or ``timeout``); then kill it."""
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env()
    )
    try:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline and needle not in seen:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
    finally:
        proc.kill()
        proc.wait()
    return seen


def test_search_without_a_live_worker_says_so(server, db_name) -> None:
    """Finding 12: a search with no live worker, stderr not a terminal, used to wait without a
    word; it now logs a WARNING after a few seconds."""
    seen = _stderr_until(
        [sys.executable, "-m", "coordinator", "search", "quadratic", "--max-evals", "2"]
        + ["--mongo", server.uri, "--db", db_name, "--exp-key", "lonely"],
        "no live worker serves",
    )
    assert "no live worker serves 'lonely'" in seen, seen
    assert "hyperfleet worker --exp-key lonely" in seen


def test_plain_fmin_without_a_live_worker_says_so(server, db_name) -> None:
    """New-user review (stop 10): plain fmin with no worker to run its trials waited without a
    word; it now logs the same WARNING as a search, naming --trust-pickled."""
    script = (
        "from hyperopt import fmin, hp, rand\n"
        "from coordinator.trials import HyperfleetTrials\n"
        f"trials = HyperfleetTrials({server.uri!r}, exp_key='lonely-fmin', db={db_name!r})\n"
        "fmin(lambda x: x, hp.uniform('x', 0, 1), algo=rand.suggest, max_evals=2,\n"
        "     trials=trials, show_progressbar=False)\n"
    )
    # a live worker without --trust-pickled does not count: it leaves these trials alone
    # (new-user review, stop 11: fmin then stalled without a word)
    untrusting = start_worker(server.uri, db_name, "--exp-key", "lonely-fmin", "--no-warm")
    try:
        store = connect(server.uri, db_name)
        wait_for(lambda: store.live_workers(60, "lonely-fmin"), 60, what="the worker's row")
        seen = _stderr_until([sys.executable, "-c", script], "no live worker serves")
    finally:
        stop_all([untrusting])
    assert "no live worker serves 'lonely-fmin'" in seen, seen
    assert "hyperfleet worker --trust-pickled --exp-key lonely-fmin" in seen


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


# -- issue 14: numbers MongoDB, numpy or a clock cannot take --------------------------------------

TOO_BIG = str(2**63)  # one more than MongoDB's largest integer
SEARCH = ["search", "quadratic", "--mongo", UNREACHABLE]
WORKER = ["worker", "--mongo", UNREACHABLE]
BAD_NUMBERS = [
    (SEARCH, "--max-evals", TOO_BIG),
    (SEARCH, "--seed", TOO_BIG),
    (SEARCH, "--seed", "-1"),
    (SEARCH, "--max-attempts", TOO_BIG),
    (SEARCH, "--queue-len", TOO_BIG),
    (SEARCH, "--prune-max-epochs", TOO_BIG),
    (SEARCH, "--prune-min-epochs", TOO_BIG),
    (SEARCH, "--prune-warmup", TOO_BIG),
    (SEARCH, "--prune-startup", TOO_BIG),
    (SEARCH, "--prune-reduction", TOO_BIG),
    (SEARCH, "--timeout", "nan"),
    (SEARCH, "--timeout", "inf"),
    (SEARCH, "--loss-threshold", "nan"),
    (SEARCH, "--loss-threshold", "-inf"),
    (WORKER, "--threads", TOO_BIG),
    (WORKER, "--max-trials", TOO_BIG),
    (WORKER, "--steps-per-execution", TOO_BIG),
    (WORKER, "--lease", "nan"),
    (WORKER, "--lease", "1e308"),
    (WORKER, "--heartbeat", "inf"),
    (WORKER, "--heartbeat", "1e308"),
    (WORKER, "--poll", "nan"),
    (WORKER, "--idle-timeout", "1e308"),
    (WORKER, "--idle-timeout", "nan"),
    (["status", "--mongo", UNREACHABLE], "--stale-after", "nan"),
    (["status", "--mongo", UNREACHABLE], "--stale-after", "1e308"),
    (["reap", "--mongo", UNREACHABLE], "--max-attempts", TOO_BIG),
    # a typo must not start 100,000 processes or containers on the host
    (["local", "quadratic"], "--workers", "100000"),
    (["launch"], "--cpu-workers", "1000"),
    (["launch"], "--per-gpu", "1000"),
    (["launch", "--stop"], "--stop-timeout", TOO_BIG),
]


@pytest.mark.parametrize(
    ("args", "option", "value"), BAD_NUMBERS, ids=[f"{a[0]}{o}={v}" for a, o, v in BAD_NUMBERS]
)
def test_out_of_range_numbers_are_one_line_before_connecting(args, option, value) -> None:
    """Issue 14: an int above 2**63-1 (OverflowError in MongoDB), a negative --seed (numpy),
    nan/inf floats and seconds too large to turn into milliseconds used to be tracebacks."""
    result = CliRunner().invoke(main, [*args, option, value])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"Invalid value for '{option}'" in lines[0], result.output
    assert "cannot reach MongoDB" not in result.output


def test_largest_mongo_int_and_a_week_of_seconds_are_accepted() -> None:
    """The bounds are MongoDB's and a week: their edges still pass the option parser (the
    command then fails to connect, not to parse)."""
    result = CliRunner().invoke(
        main,
        [*SEARCH, "--max-evals", str(2**63 - 1), "--seed", str(2**63 - 1), "--timeout", "1e6"],
        env={"HYPERFLEET_OUTAGE_S": "0"},
    )
    assert "Invalid value" not in result.output


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e308", "soon"])
def test_bad_outage_budget_is_one_line(value: str) -> None:
    """Issue 14: HYPERFLEET_OUTAGE_S=nan or a negative budget was taken as is."""
    line = one_line(
        hyperfleet(
            "status", "--mongo", UNREACHABLE, env=cli_env(HYPERFLEET_OUTAGE_S=value), timeout=60
        )
    )
    assert "HYPERFLEET_OUTAGE_S" in line and repr(value) in line


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_set_non_finite_float_is_one_line(value: str) -> None:
    """Issue 14: `--set bound=nan` was a ValueError from hyperopt, `bound=inf` an
    OverflowError."""
    result = CliRunner().invoke(main, [*SEARCH, "--set", f"bound={value}"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: setting bound={value!r} must be a finite number"


def test_a_space_that_cannot_be_built_from_its_settings_is_a_space_error() -> None:
    """Issue 14: a build that hyperopt refuses for these settings names the space and them."""
    from hyperopt import hp

    from coordinator.errors import SpaceError
    from search_spaces.base import SearchSpace, Setting

    space = SearchSpace(
        "ranged",
        lambda s: {"x": hp.uniform("x", s["low"], s["high"])},
        lambda p: {"loss": p["x"], "status": "ok"},
        settings=(Setting("low", 0.0, type=float), Setting("high", 1.0, type=float)),
    )
    settings = space.resolve_settings({"low": "5"})
    with pytest.raises(SpaceError, match=r"space 'ranged' cannot be built .*low=5\.0, high=1\.0"):
        space.hyperopt_space(settings)
    assert space.hyperopt_space(space.resolve_settings())["x"] is not None


#: spaces that hyperopt refuses only once a search runs: (space expression, what the line says)
UNSEARCHABLE = {
    "duplicate_labels": (
        '{"a": hp.uniform("x", 0, 1), "b": hp.uniform("x", 0, 2)}',
        "two hyperparameters are labelled 'x'",
    ),
    "no_hp_expression": ("{}", "hyperopt cannot read it (IndexError"),
    "empty_choice": (
        '{"a": hp.choice("a", [1, 2]), "b": hp.choice("b", [])}',
        "hyperparameter 'b' cannot be drawn",
    ),
}


@pytest.mark.parametrize("name", sorted(UNSEARCHABLE))
def test_spaces_search_and_local_refuse_what_hyperopt_cannot_search(name, tmp_path) -> None:
    """Issue 22, item 7: `spaces --spaces FILE` passed spaces that `search` and `local` then died
    on with 30-line tracebacks (DuplicateLabel, IndexError, ValueError), `local` after it had
    started the server and its workers. All three now refuse them with the same one line."""
    expression, says = UNSEARCHABLE[name]
    path = tmp_path / f"{name}.py"
    path.write_text(
        "from hyperopt import hp\n"
        "from search_spaces import SearchSpace\n"
        f"SPACE = SearchSpace({name!r}, {expression}, lambda p: {{'loss': 0.0, 'status': 'ok'}})\n"
    )
    listed = hyperfleet("spaces", "--spaces", str(path), timeout=60)
    line = one_line(listed)
    assert line.startswith(f"Error: space {name!r} ({path}): ") and says in line, line
    assert f"{name}:" in listed.stdout and "quadratic:" in listed.stdout  # the list still shows
    searched = hyperfleet("search", name, "--spaces", str(path), "--mongo", UNREACHABLE)
    assert one_line(searched) == line  # refused before connecting
    db = tmp_path / "db"
    ran = hyperfleet("local", name, "--spaces", str(path), "--db-path", str(db), cwd=tmp_path)
    assert one_line(ran) == line
    assert " each), results in" not in ran.stderr and not list(db.glob("*"))


def test_spaces_accepts_every_built_in_space() -> None:
    """The check `spaces` runs passes every space hyperfleet ships (exit 0)."""
    result = hyperfleet("spaces", timeout=60)
    assert result.returncode == 0 and "cannot be searched" not in result.stdout, result.stderr


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ("tls=maybe", "tls"),
        ("connectTimeoutMS=abc", "connecttimeoutms"),
        ("authMechanism=BOGUS", "authmechanism"),
    ],
)
def test_invalid_uri_option_is_one_line_not_a_warning(option: str, named: str) -> None:
    """Issue 14: pymongo warned twice about an invalid URI option and went on without it."""
    result = hyperfleet(
        "status", "--mongo", f"mongodb://u:s3cret@127.0.0.1:9/?{option}", timeout=60
    )
    line = one_line(result)
    assert "invalid option" in line and named in line.lower()
    assert "UserWarning" not in result.stderr and "s3cret" not in result.stderr


def test_server_refuses_an_empty_host() -> None:
    """Issue 14: `server --host ''` was accepted and then hung."""
    result = CliRunner().invoke(main, ["server", "--host", "", "--db-path", ":memory:"])
    assert result.exit_code == 2
    assert "Invalid value for '--host'" in result.output


def test_version_is_the_package_version() -> None:
    import coordinator

    result = CliRunner().invoke(main, ["--version"])
    assert (
        result.exit_code == 0
        and result.output.strip() == f"hyperfleet, version {coordinator.__version__}"
    )


def test_liar_with_another_algorithm_says_it_is_ignored() -> None:
    args = ("search", "no-such-space", "--mongo", "mongodb://127.0.0.1:9/", "--algo", "rand")
    result = hyperfleet(*args, "--liar", "best", timeout=60)
    assert "--liar only changes --algo tpe; it is ignored with --algo rand" in result.stderr
    quiet = hyperfleet(*args, timeout=60)
    assert "--liar" not in quiet.stderr and "no-such-space" in quiet.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["local", "quadratic", "--gpus", "0,1,2,3,4,5,6,7", "--per-gpu", "256"],
        ["launch", "--gpus", "0,1", "--per-gpu", "200", "--mongo", UNREACHABLE],
    ],
)
def test_too_many_workers_in_all_is_one_line_before_anything_starts(args, tmp_path) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "at most 256" in lines[0], result.output
