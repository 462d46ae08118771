"""``hyperfleet server``: the embedded MongoDB-compatible server in the foreground."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from coordinator.cli.options import db_path_option


@click.command()
@db_path_option("storage directory (':memory:' for a throwaway server)")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=27017,
    show_default=True,
    help="port (0: any free port)",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to listen on (0.0.0.0 for other machines)",
)
@click.option("--auth", is_flag=True, help="require SCRAM authentication")
@click.option(
    "--sync/--no-sync",
    default=True,
    show_default=True,
    help="make each commit durable before acknowledging it (--no-sync: faster, but a "
    "killed server forgets its last writes)",
)
def server(db_path: str, port: int, host: str, auth: bool, sync: bool) -> None:
    """Run the embedded MongoDB-compatible server (SecantusDB) in the foreground."""
    from coordinator.server import EmbeddedServer

    srv = EmbeddedServer(db_path, host=host, port=port, auth=auth, sync=sync)
    srv.start()
    shown_host = "127.0.0.1" if host == "0.0.0.0" else host
    click.echo(f"hyperfleet server ready: mongodb://{shown_host}:{srv.port}/ (data: {srv.db_path})")
    click.echo("stop it with Ctrl-C", err=True)
    sys.stdout.flush()

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        code = srv.wait()
        raise click.ClickException(
            f"the embedded server exited with code {code}; see {srv.log_path}"
        )
    except KeyboardInterrupt:
        click.echo("stopping the server ...", err=True)
    finally:
        srv.stop()
