"""``hyperfleet dashboard``: watch searches in a browser (the app: :mod:`coordinator.dashboard`)."""

from __future__ import annotations

import click

from coordinator.cli.options import listen_options, mongo_options


@click.command()
@mongo_options()
@listen_options(
    port=8080,
    host_help="address to listen on; anything beyond loopback is logged as a warning",
    port_help="port (0: any free port; the URL printed says which)",
)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="let the pages cancel experiments and requeue running trials [default: read-only]",
)
def dashboard(mongo: str, db: str, host: str, port: int, allow_actions: bool) -> None:
    """Serve a live web dashboard of the database's searches and print its URL."""
    try:
        from coordinator.dashboard.serve import serve
    except ImportError as e:
        raise click.ClickException(
            f"the dashboard needs the 'dashboard' extra ({e.name} is missing): "
            "pip install 'hyperfleet[dashboard]'"
        ) from e
    serve(mongo, db, host=host, port=port, allow_actions=allow_actions, echo=_echo)


def _echo(line: str) -> None:
    click.echo(line)
