"""Run the dashboard: bind, warn when listening beyond loopback, print the URL, serve."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from coordinator.errors import ConfigError

logger = logging.getLogger(__name__)

#: seconds the dashboard waits for MongoDB per request before showing the 503 page
DB_TIMEOUT_S = 3.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``port`` 0: any free one); a clear ConfigError
    when the address is taken or not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host"
        ) from e
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def warm(dash: Any) -> None:
    """Read the running experiments into the dashboard's cache in the background, so the first
    look at a big one does not wait for the full read (O(trials), once per process)."""
    from coordinator.errors import HyperfleetError

    try:
        for exp in dash.store.list_experiments():
            if exp.get("status") == "running":
                dash.caches.get(exp["_id"])
    except HyperfleetError as e:  # the pages say so; nothing to warm
        logger.info("not warming the dashboard's cache: %s", e)


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(
    uri: str,
    db: str,
    *,
    host: str,
    port: int,
    allow_actions: bool,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve the dashboard of database ``db`` at ``uri`` until interrupted."""
    import uvicorn

    from coordinator.dashboard.app import create_app, loopback_hosts
    from coordinator.store import connect, ping, redact_uri

    safe = redact_uri(uri)
    # no ping here: the dashboard starts while the database is down and says so on its pages;
    # a request waits at most DB_TIMEOUT_S (no retries: the page's next poll is the retry)
    store = connect(uri, db, timeout_s=DB_TIMEOUT_S, outage_s=0.0, check=False)
    loopback = is_loopback(host)
    if not loopback:
        logger.warning(
            "listening on %s, beyond this machine: anyone who can reach port %s can read every "
            "experiment%s; put it behind a VPN, an SSH tunnel or an authenticating proxy",
            host,
            port,
            " and CANCEL searches (--allow-actions)" if allow_actions else "",
        )
    sock = bind(host, port)
    port = sock.getsockname()[1]
    app = create_app(
        store,
        safe_uri=safe,
        allow_actions=allow_actions,
        allowed_hosts=loopback_hosts(host) if loopback and ":" not in host else None,
    )
    threading.Thread(target=warm, args=(app.state.dashboard,), daemon=True).start()
    mode = "actions allowed" if allow_actions else "read-only"
    echo(f"hyperfleet dashboard: {url_of(host, port)}  ({mode}; MongoDB {safe}, database {db})")
    if not ping(uri, timeout_s=1.0):
        logger.warning("MongoDB at %s does not answer yet; the pages say so until it does", safe)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        store.close()
