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
