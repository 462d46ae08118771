"""What every request passes before any page code runs: one ASGI middleware, outermost.

In order, and all before the app reads the database or the request's body:

1. **Security headers** on every response this process sends, whoever sends it (pages, JSON,
   static files, redirects, and the 400/401/404/405/413/414/429 answers).
2. **Host check** (DNS rebinding) on every bind: IPv4, IPv6 and names (:func:`host_policy`).
3. **Bounded request**: a path over :data:`MAX_PATH_BYTES` or a query string over
   :data:`MAX_QUERY_BYTES` is a 414; a body over :data:`MAX_BODY_BYTES` is a 413 — refused from
   its ``Content-Length`` before a byte is read, or once that many bytes have arrived.
4. **Login** (:mod:`~coordinator.dashboard.login`): ``?token=SECRET`` sets the session cookie and
   redirects to the same address without it; without a session or bearer token a request gets
   a 401 page that shows nothing of the database (read-only viewing stays open only with
   ``public_read``; actions never).
5. **Rate limit** per client (its session, else its address) on the paths that cost the
   database something (:data:`EXPENSIVE_PATHS`, and the app charges unknown-key lookups): a 429
   with ``Retry-After``.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from coordinator.dashboard.login import OPEN, PUBLIC, TOKEN_PARAM, Identity, Login, peer_user

#: the audit log (refused actions here; the app logs the rest)
audit = logging.getLogger("coordinator.dashboard.audit")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_PATH_BYTES = 2048
MAX_QUERY_BYTES = 4096
#: the action forms send a few hundred bytes
MAX_BODY_BYTES = 16 * 1024
#: paths whose every request reads the database beyond one experiment's incremental poll
EXPENSIVE_PATHS = ("/", "/workers", "/model", "/actions/cancel", "/actions/requeue")

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": _CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
_PRIVATE_CACHE = ("cache-control", "no-store")


# -- Host ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostPolicy:
    """The ``Host`` names a dashboard answers: ``names``, and any IP literal when ``any_ip``
    (a rebinding attack always arrives under the attacker's DNS name, never an address)."""

    names: frozenset[str]
    any_ip: bool = False

    def allows(self, header: str | None) -> bool:
        name = host_name(header)
        if name is None:
            return False
        if name in self.names:
            return True
        if self.any_ip:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                return False
            return True
        return False


def host_name(header: str | None) -> str | None:
    """The name in a ``Host`` header (lower case, no port, no brackets, no trailing dot), or
    ``None`` for a missing or malformed one."""
    if not header or len(header) > 300:
        return None
    try:
        name = urllib.parse.urlsplit("//" + header).hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(host: str) -> bool:
    host = strip_brackets(host)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_policy(bind_host: str, extra: Iterable[str] = ()) -> HostPolicy:
    """The names a dashboard bound to ``bind_host`` answers. On loopback (``127.0.0.1``,
    ``::1``, ``localhost``): the loopback names only. Beyond it (``0.0.0.0``, ``::``, an
    address, a name): also this machine's names, the bound name, any IP literal and ``extra``
    (``--allowed-host``, e.g. the name a proxy uses)."""
    bind = strip_brackets(bind_host).lower()
    names = {"localhost", "127.0.0.1", "::1", bind, *(strip_brackets(e).lower() for e in extra)}
    if is_loopback(bind):
        return HostPolicy(frozenset(names))
    names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return HostPolicy(frozenset(n for n in names if n), any_ip=True)


# -- rate limit ----------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per client: ``burst`` requests at once, then ``per_s`` per second. Keeps at
    most ``max_clients`` buckets (the least recently used go first)."""

    def __init__(
        self,
        per_s: float = 5.0,
        burst: float = 30.0,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_s, self.burst, self.max_clients, self.clock = per_s, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, cost: float = 1.0) -> float:
        """0 when ``client`` may go on (its bucket is charged ``cost``), else the seconds until
        it may."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.per_s)
            wait = 0.0 if tokens >= cost else (cost - tokens) / self.per_s
            if not wait:
                tokens -= cost
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait


def describe(scope: Scope, who: Identity) -> str:
    """Who sent a request, for the audit log: session (or bearer), address and, for a
    connection from this machine, the local user that owns the client's socket."""
    client = scope.get("client")
    server = scope.get("server")
    user = peer_user(tuple(client) if client else None, server[1] if server else None)
    address = f"{client[0]}:{client[1]}" if client else "?"
    return f"{who.label} from {address}" + (f" (local user {user})" if user else "")


def client_key(scope: Scope, who: Identity) -> str:
    """The rate limit's name for a requester: its session, else its address."""
    if who.how in ("session", "bearer"):
        return who.label
    client = scope.get("client") or ("?", 0)
    return f"address {client[0]}"


# -- the middleware -----------------------------------------------------------------------------


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _plain(
    send: Send, status: int, text: str, *, extra: dict[str, str] | None = None
) -> None:
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in · hyperfleet</title>
<link rel="stylesheet" href="/static/dashboard.css"></head>
<body><main><h1>This dashboard is private</h1>
<div class="error-box"><p class="message">Open the login address that
<code>hyperfleet dashboard</code> printed when it started (it ends in <code>?token=…</code>);
the token is also in the file it named (readable only by its owner). Scripts send
<code>Authorization: Bearer TOKEN</code>.</p></div></main></body></html>
"""


class Guard:
    """The middleware (see the module docstring). ``login`` ``None``: no secret (a library or
    test app), every requester is :data:`~coordinator.dashboard.login.OPEN`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        hosts: HostPolicy | None = None,
        login: Login | None = None,
        public_read: bool = False,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.app, self.hosts, self.login = app, hosts, login
        self.public_read, self.limiter = public_read, limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        secured = _secured(send, private=not path.startswith("/static/"))
        headers = _headers(scope)
        if self.hosts is not None and not self.hosts.allows(headers.get("host")):
            await _plain(secured, 400, "Invalid host header")
            return
        if len(scope.get("raw_path") or path.encode()) > MAX_PATH_BYTES or (
            len(scope.get("query_string", b"")) > MAX_QUERY_BYTES
        ):
            await _plain(secured, 414, "The address is too long")
            return
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            await _plain(secured, 413, f"Request bodies are limited to {MAX_BODY_BYTES} bytes")
            return
        who = await self._identify(scope, headers, secured)
        if who is None:
            return
        scope.setdefault("state", {})["who"] = who
        if self.limiter is not None and path in EXPENSIVE_PATHS:
            wait = self.limiter.take(client_key(scope, who))
            if wait:
                await _plain(
                    secured,
                    429,
                    "Too many requests; wait a moment",
                    extra={"retry-after": str(max(1, math.ceil(wait)))},
                )
                return
        if scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, secured)
            return
        body = await _bounded_body(receive)
        if body is None:
            await _plain(secured, 413, f"Request bodies are limited to {MAX_BODY_BYTES} bytes")
            return
        await self.app(scope, _replay(body, receive), secured)

    async def _identify(self, scope: Scope, headers: dict[str, str], send: Send) -> Identity | None:
        """The requester, or ``None`` once a redirect (login) or a 401 has been sent."""
        if self.login is None:
            return OPEN
        path = scope.get("path", "")
        query = urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        offered = [v for k, v in query if k == TOKEN_PARAM]
        if offered and scope.get("method") == "GET" and self.login.secret_ok(offered[0]):
            rest = urllib.parse.urlencode([(k, v) for k, v in query if k != TOKEN_PARAM])
            location = path + (f"?{rest}" if rest else "")
            cookie = self.login.set_cookie_header(self.login.new_session())
            await _plain(send, 303, "Logged in", extra={"location": location, "set-cookie": cookie})
            return None
        who = self.login.identify(headers)
        if who is not None:
            return who
        if path.startswith("/static/"):
            return PUBLIC
        if self.public_read and scope.get("method") in ("GET", "HEAD") and not offered:
            return PUBLIC
        # a refused action: logged, at most as often as the rate limit lets this client ask
        acting = scope.get("method") not in ("GET", "HEAD")
        if acting and (self.limiter is None or not self.limiter.take(client_key(scope, PUBLIC))):
            audit.warning(
                "dashboard: REFUSED %s %s by %s: not logged in",
                scope.get("method"),
                path[:100],
                describe(scope, PUBLIC),
            )
        body = _LOGIN_PAGE.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"text/html; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="hyperfleet dashboard"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return None


def _secured(send: Send, *, private: bool) -> Send:
    """``send`` that adds the security headers (and ``Cache-Control: no-store`` to anything but
    static files) to the response's start, keeping any the app set itself."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {k.decode("latin-1").lower() for k, _ in headers}
            wanted = dict(SECURITY_HEADERS)
            if private:
                wanted[_PRIVATE_CACHE[0]] = _PRIVATE_CACHE[1]
            headers += [(k.encode(), v.encode()) for k, v in wanted.items() if k not in present]
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def _bounded_body(receive: Receive) -> bytes | None:
    """The whole body, or ``None`` as soon as more than :data:`MAX_BODY_BYTES` arrived."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
