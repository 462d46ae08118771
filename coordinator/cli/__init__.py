"""The ``hyperfleet`` command: the group, its one-line errors, and the one list of its commands.

Commands live in the module of their group and share the options of :mod:`.options`:

- :mod:`.server`: ``server`` (the embedded MongoDB-compatible server)
- :mod:`.worker`: ``worker``
- :mod:`.search`: ``search``, ``local``, ``spaces``
- :mod:`.maintenance`: ``reap``, ``cancel``
- :mod:`.inspect`: ``status``, ``workers``, ``top``, ``show``, ``export``, ``plot``
- :mod:`.importance`: ``importance`` (which hyperparameters mattered)
- :mod:`.best`: ``best`` (Keras models)
- :mod:`.launch`: ``launch`` (worker containers on a Docker host)
- :mod:`.dashboard`: ``dashboard`` (the web dashboard)

Command modules import hyperopt, pymongo, numpy and Keras inside the command functions, never at
import time, so ``hyperfleet --help`` stays fast.
"""

from __future__ import annotations

import os
from typing import Any

import click

from coordinator import __version__
from coordinator.cli import (
    best,
    dashboard,
    importance,
    inspect,
    launch,
    maintenance,
    search,
    server,
    worker,
)
from coordinator.cli.options import log_level_option
from coordinator.errors import ConfigError, HyperfleetError, SpaceError


class _BadInput(click.ClickException):
    """Bad input (a ConfigError, a SpaceError or a usage error of a command): one line and exit
    code 2."""

    exit_code = 2


class HyperfleetGroup(click.Group):
    """Turns hyperfleet's errors, and a command's usage errors (a bad option value, a missing
    option), into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.MissingParameter as e:
            raise _BadInput(_missing_message(e)) from e
        except click.UsageError as e:
            raise _BadInput(e.format_message()) from e
        except (ConfigError, SpaceError) as e:
            raise _BadInput(str(e)) from e
        except HyperfleetError as e:
            raise click.ClickException(str(e)) from e


def _missing_message(e: click.MissingParameter) -> str:
    """click's "Missing option '--mongo'." naming the environment variable that also sets it."""
    message = e.format_message()
    envvar = getattr(e.param, "envvar", None)
    names = [envvar] if isinstance(envvar, str) else list(envvar or [])
    if not names:
        return message
    either = " or ".join(f"${n}" for n in names)
    return f"{message.rstrip('.')} (or set {either})."


def _setup_logging(level: str, verbose: bool = False) -> None:
    # TensorFlow's, absl's and oneDNN's start-up banners are noise in a terminal and in worker
    # logs: filtered from stderr unless --verbose (workers and `best --evaluate` inherit it)
    from coordinator import logs, quiet

    if verbose:
        os.environ[quiet.VERBOSE_ENV] = "1"
    else:
        quiet.install()
    logs.configure(level)


@click.group(cls=HyperfleetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hyperfleet")  # works from an uninstalled checkout
@log_level_option()
@click.option(
    "--verbose",
    is_flag=True,
    envvar="HYPERFLEET_VERBOSE",
    help="keep TensorFlow's, absl's and oneDNN's start-up banners [env: HYPERFLEET_VERBOSE]",
)
def main(log_level: str, verbose: bool) -> None:
    """hyperfleet: distributed hyperparameter search for Keras models over MongoDB."""
    _setup_logging(log_level, verbose)


# -- the commands: registered here and nowhere else ---------------------------------------------
main.add_command(server.server)
main.add_command(worker.worker)
main.add_command(search.search)
main.add_command(search.local)
main.add_command(search.spaces)
main.add_command(maintenance.reap)
main.add_command(maintenance.cancel)
main.add_command(inspect.status)
main.add_command(inspect.workers)
main.add_command(inspect.top)
main.add_command(inspect.show)
main.add_command(inspect.export)
main.add_command(inspect.plot)
main.add_command(importance.importance)
main.add_command(best.best)
main.add_command(launch.launch)
main.add_command(dashboard.dashboard)


def run() -> None:
    """Console-script entry point."""
    main(prog_name="hyperfleet")


if __name__ == "__main__":
    run()
