"""What commands print (issue 23): missing options name their environment variable, times read
as times and durations as durations."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from coordinator.cli import main
from tests.conftest import cli_env, hyperfleet


def _commands_with_env_options() -> list[tuple[str, click.Option]]:
    return [
        (name, p)
        for name, cmd in main.commands.items()
        for p in cmd.params
        if isinstance(p, click.Option) and p.required and p.envvar
    ]


@pytest.mark.parametrize(("command", "option"), _commands_with_env_options(), ids=str)
def test_every_missing_option_names_its_environment_variable(command, option) -> None:
    env = {k: None for k in ("HYPERFLEET_MONGO", "HYPERFLEET_EXP_KEY", "HYPERFLEET_DB")}
    args = [command]
    for other in main.commands[command].params:  # give every other required option a value
        if isinstance(other, click.Option) and other.required and other is not option:
            args += [other.opts[0], "x"]
    params = main.commands[command].params
    args += ["1" for a in params if isinstance(a, click.Argument) and a.required]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2, result.output
    assert f"Missing option '{option.opts[0]}' (or set ${option.envvar})." in result.output


def test_status_without_mongo_in_a_real_process() -> None:
    out = hyperfleet("status", env=cli_env(), timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip() == "Error: Missing option '--mongo' (or set $HYPERFLEET_MONGO)."


def test_times_read_as_times_and_durations_as_durations() -> None:
    from coordinator.inspect import fmt_duration, fmt_field

    assert fmt_field("eval_time", 1796554403.79) == "2026-12-06 10:53:23 UTC"  # was 1.79654e+09
    assert fmt_field("duration_s", 0.214) == "214 ms"  # new-user review: 0.016 s read 0.0 s
    assert fmt_field("compile_s", 0.0163) == "16 ms" and fmt_field("fit_s", 1.25) == "1.2 s"
    assert fmt_field("loss", 0.25) == "0.25"
    assert fmt_field("warm_time", 12.5) == "12.5"  # not a date: too small for a Unix time
    assert [fmt_duration(s) for s in (0.2, 9.4, 42.4, 185, 7300)] == [
        "0.2 s",
        "9.4 s",
        "42 s",
        "3 min 5 s",
        "2 h 1 min",
    ]


def test_trial_number_counts_within_the_experiment() -> None:
    from coordinator.rules import trial_number

    tids = [43, 31, 32, 40]  # the tid counter is shared by the database's experiments
    assert [trial_number(t, tids) for t in (31, 32, 40, 43)] == [1, 2, 3, 4]
