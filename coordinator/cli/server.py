"""``hyperfleet server``: the embedded MongoDB-compatible server in the foreground."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import urllib.parse
from typing import Any

import click

from coordinator.cli.options import db_path_option, listen_options
from coordinator.errors import ConfigError

#: where ``--create-user`` reads the new user's password (else it prompts; never from argv)
PASSWORD_ENV = "HYPERFLEET_PASSWORD"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def read_password(user: str) -> str:
    """The password for ``user``: $HYPERFLEET_PASSWORD, else asked twice at the terminal."""
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        if not sys.stdin.isatty():
            raise ConfigError(
                f"--create-user {user}: set {PASSWORD_ENV} or run in a terminal to be asked "
                "for the password (it is never taken from the command line)"
            )
        password = click.prompt(
            f"password for {user}", hide_input=True, confirmation_prompt=True, err=True
        )
    if not password:
        raise ConfigError(f"--create-user {user}: the password is empty")
    return password


def bootstrap_user(db_path: str, user: str, password: str) -> None:
    """Create ``user`` (role root) in the database at ``db_path`` before the server starts,
    without opening any port (:func:`coordinator.server.create_first_user`): a bootstrap
    server on loopback, even for a second, is one every user of a shared machine could use."""
    from coordinator.server import create_first_user

    create_first_user(db_path, user, password)


@click.command()
@db_path_option("storage directory (':memory:' for a throwaway server)")
@listen_options(
    port=27017,
    host_help="address to listen on (0.0.0.0 for other machines: use --auth then)",
    port_help="port (0: any free port)",
)
@click.option("--auth", is_flag=True, help="require SCRAM authentication")
@click.option(
    "--create-user",
    "create_user",
    metavar="NAME",
    default=None,
    help=f"with --auth: first create user NAME (role root); the password comes from "
    f"${PASSWORD_ENV} or a prompt, never the command line",
)
@click.option(
    "--sync/--no-sync",
    default=True,
    show_default=True,
    help="make each commit durable before acknowledging it (--no-sync: faster, but a "
    "killed server forgets its last writes)",
)
def server(
    db_path: str, port: int, host: str, auth: bool, create_user: str | None, sync: bool
) -> None:
    """Run the embedded MongoDB-compatible server (SecantusDB) in the foreground.

    A server for other machines: create its first user and require authentication, e.g.
    HYPERFLEET_PASSWORD=... hyperfleet server --host 0.0.0.0 --auth --create-user alice
    """
    from coordinator.server import EmbeddedServer

    if not host.strip() or host != host.strip():
        raise click.BadParameter(
            f"{host!r}: give an address such as 127.0.0.1 or 0.0.0.0", param_hint="'--host'"
        )
    if create_user is not None:
        if not auth:
            raise click.UsageError("--create-user needs --auth (users only matter with it)")
        if db_path == ":memory:":
            raise click.UsageError("--create-user needs a --db-path on disk, not ':memory:'")
        bootstrap_user(db_path, create_user, read_password(create_user))
        click.echo(f"created user {create_user!r} (role root, authSource admin)", err=True)
    srv = EmbeddedServer(db_path, host=host, port=port, auth=auth, sync=sync)

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # the daemon is stopped and its temp folder removed
    try:
        srv.start()
        if not auth and not is_loopback(host):  # after start: the real port, also for --port 0
            click.echo(
                f"warning: listening on {host} without --auth: anyone who can reach port "
                f"{srv.port} can read and change every experiment; add --auth (and "
                "--create-user NAME once)",
                err=True,
            )
        shown_host = "127.0.0.1" if host == "0.0.0.0" else host
        user = f"{urllib.parse.quote_plus(create_user)}:PASSWORD@" if create_user else ""
        suffix = "?authSource=admin" if auth else ""
        click.echo(
            f"hyperfleet server ready: mongodb://{user}{shown_host}:{srv.port}/{suffix} "
            f"(data: {srv.db_path})"
        )
        click.echo("stop it with Ctrl-C", err=True)
        sys.stdout.flush()
        code = srv.wait()
        raise click.ClickException(
            f"the embedded server exited with code {code} "
            f"(last log line: {srv.last_log_line()}); start it again"
        )
    except KeyboardInterrupt:
        click.echo("stopping the server ...", err=True)
    finally:
        srv.stop()
