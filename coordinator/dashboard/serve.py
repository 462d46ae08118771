"""Run the dashboard: its secret, bind, warn when listening beyond loopback, print the login
URL once, serve."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.dashboard.guard import host_policy, is_loopback, strip_brackets
from coordinator.errors import ConfigError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from coordinator.store import TrialStoreBase

logger = logging.getLogger(__name__)

#: seconds the dashboard waits for MongoDB per request before showing the 503 page
DB_TIMEOUT_S = 3.0


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``port`` 0: any free one); a clear ConfigError
    when the address is taken or not ours."""
    host = strip_brackets(host)
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
    host = strip_brackets(host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def build_app(
    store: TrialStoreBase,
    *,
    safe_uri: str,
    host: str,
    port: int,
    secret: str,
    allow_actions: bool = False,
    public_read: bool = False,
    allowed_hosts: tuple[str, ...] = (),
) -> Starlette:
    """The app as ``hyperfleet dashboard`` serves it on ``host:port``: the Host check of that
    bind (IPv4, IPv6 or a name), the login with ``secret`` (its cookie named after the port:
    cookies do not tell ports apart), the rate limit."""
    from coordinator.dashboard.app import create_app
    from coordinator.dashboard.login import Login

    return create_app(
        store,
        safe_uri=safe_uri,
        allow_actions=allow_actions,
        hosts=host_policy(host, allowed_hosts),
        login=Login(secret, cookie_name=f"hyperfleet-dashboard-{port}"),
        public_read=public_read,
    )


def warn_beyond_loopback(host: str, port: int, *, allow_actions: bool, public_read: bool) -> None:
    """The warning of a dashboard that listens beyond loopback (IPv4, IPv6 or a name)."""
    if is_loopback(host):
        return
    logger.warning(
        "listening on %s, beyond this machine: anyone who can reach port %s %s; put it behind a "
        "VPN or an authenticating proxy, or keep it on 127.0.0.1 and use an SSH tunnel",
        host,
        port,
        "can read every experiment without logging in (--public-read)"
        if public_read
        else "can try to guess its secret and sees its traffic unencrypted (plain HTTP)",
    )
    if allow_actions and public_read:
        logger.warning("actions still need the login; public viewers can only look")


def serve(
    uri: str,
    db: str,
    *,
    host: str,
    port: int,
    allow_actions: bool,
    token_file: Path,
    new_token: bool = False,
    public_read: bool = False,
    allowed_hosts: tuple[str, ...] = (),
    echo: Callable[[str], None] = print,
) -> None:
    """Serve the dashboard of database ``db`` at ``uri`` until interrupted."""
    import uvicorn

    from coordinator.dashboard.login import TOKEN_PARAM, load_or_create_secret
    from coordinator.store import connect, ping, redact_uri

    secret = load_or_create_secret(token_file, rotate=new_token)
    safe = redact_uri(uri)
    # no ping here: the dashboard starts while the database is down and says so on its pages;
    # a request waits at most DB_TIMEOUT_S (no retries: the page's next poll is the retry)
    store = connect(uri, db, timeout_s=DB_TIMEOUT_S, outage_s=0.0, check=False)
    sock = bind(host, port)
    port = sock.getsockname()[1]
    warn_beyond_loopback(host, port, allow_actions=allow_actions, public_read=public_read)
    app = build_app(
        store,
        safe_uri=safe,
        host=host,
        port=port,
        secret=secret,
        allow_actions=allow_actions,
        public_read=public_read,
        allowed_hosts=allowed_hosts,
    )
    threading.Thread(target=warm, args=(app.state.dashboard,), daemon=True).start()
    mode = "actions allowed" if allow_actions else "read-only"
    shown = "127.0.0.1" if strip_brackets(host) in ("0.0.0.0", "::") else host
    echo(
        f"hyperfleet dashboard: {url_of(shown, port)}?{TOKEN_PARAM}={secret}  ({mode}"
        f"{', public read' if public_read else ''}; MongoDB {safe}, database {db}; "
        f"the token is also in {token_file})"
    )
    if not ping(uri, timeout_s=1.0):
        logger.warning("MongoDB at %s does not answer yet; the pages say so until it does", safe)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        store.close()
