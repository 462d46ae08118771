"""``hyperfleet dashboard``: watch searches in a browser (the app: :mod:`coordinator.dashboard`)."""

from __future__ import annotations

from pathlib import Path

import click

from coordinator.cli.options import listen_options, mongo_options
from coordinator.dashboard.login import TOKEN_FILE_ENV, default_token_file  # stdlib only


@click.command()
@mongo_options()
@listen_options(
    port=8080,
    host_help="address to listen on; anything beyond loopback is logged as a warning (keep "
    "127.0.0.1 and use an SSH tunnel: see the README)",
    port_help="port (0: any free port; the URL printed says which)",
)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="let logged-in pages cancel experiments and requeue running trials [default: read-only]",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=TOKEN_FILE_ENV,
    default=None,
    help="the login secret's file, created with mode 0600 when missing and reused after "
    "[default: $XDG_CONFIG_HOME/hyperfleet/dashboard-token]",
)
@click.option(
    "--new-token", is_flag=True, help="replace the secret (every browser must log in again)"
)
@click.option(
    "--public-read",
    is_flag=True,
    help="let anyone who can connect look without logging in (actions still need the login)",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="one more Host name to answer (e.g. a proxy's); repeatable",
)
def dashboard(
    mongo: str,
    db: str,
    host: str,
    port: int,
    allow_actions: bool,
    token_file: Path | None,
    new_token: bool,
    public_read: bool,
    allowed_hosts: tuple[str, ...],
) -> None:
    """Serve a live web dashboard of the database's searches and print its login URL.

    The dashboard is private to you: it prints a URL with a secret token once (also kept in a
    file only you can read); other users of this machine get a login page.
    """
    try:
        from coordinator.dashboard.serve import serve
    except ImportError as e:
        raise click.ClickException(
            f"the dashboard needs the 'dashboard' extra ({e.name} is missing): "
            "pip install 'hyperfleet[dashboard]'"
        ) from e
    serve(
        mongo,
        db,
        host=host,
        port=port,
        allow_actions=allow_actions,
        token_file=token_file or default_token_file(),
        new_token=new_token,
        public_read=public_read,
        allowed_hosts=allowed_hosts,
        echo=_echo,
    )


def _echo(line: str) -> None:
    click.echo(line)
