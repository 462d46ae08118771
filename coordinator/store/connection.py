"""Reaching MongoDB: client options, the outage budget, retries and error translation.

Low-level pymongo errors are translated here, once, at the boundary: callers of the store only
ever see :class:`~coordinator.errors.StoreUnavailable` (unreachable for longer than the outage
budget), :class:`~coordinator.errors.AuthError` (credentials refused) or
:class:`~coordinator.errors.ConfigError` (a malformed URI or database name). Passwords never
reach a log line or a message: every URI shown is :func:`redact_uri`'d.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pymongo
import pymongo.common
import pymongo.errors
import pymongo.uri_parser

from coordinator import defaults
from coordinator.errors import AuthError, ConfigError, StoreUnavailable

logger = logging.getLogger("coordinator.store")

#: MongoDB's error code for failed authentication
AUTH_FAILED = 18
#: ... and for an operation the (missing or too weak) credentials may not run
UNAUTHORIZED = 13
AUTH_CODES = (AUTH_FAILED, UNAUTHORIZED)

T = TypeVar("T")

#: what follows the ``@`` that ends the credentials: a host list, then a path, a query or the end
_HOSTS_RE = re.compile(r"[A-Za-z0-9.\-_:,\[\]%]+(?=[/?]|$)")
#: query options whose values are secrets (matched case-insensitively, as pymongo does)
_SECRET_OPTION_RE = re.compile(
    r"(?P<key>(?:^|[?&;])(?:[A-Za-z]*password|authMechanismProperties)=)(?P<value>[^&;]*)",
    re.IGNORECASE,
)
REDACTED = "***"
#: the longest outage budget ($HYPERFLEET_OUTAGE_S) accepted: a week
MAX_OUTAGE_S = 7 * 24 * 3600.0


def _credentials_end(rest: str) -> int:
    """Index of the ``@`` that ends the credentials in ``rest`` (the URI after ``://``), or -1.

    The password may hold unescaped ``@``, ``/``, ``?`` or ``#``, so when the userinfo holds a
    ``:`` (a password follows) this takes the **last** ``@`` followed by a host list: an
    unescaped ``@`` in a password can only be resolved that way, and a wrong guess hides too
    much, never too little. Without a password (``user@host``) it prefers an ``@`` before the
    query."""
    ats = [i for i, c in enumerate(rest) if c == "@" and _HOSTS_RE.match(rest, i + 1)]
    if not ats:
        return -1
    first_at = rest.find("@")
    if ":" in rest[:first_at]:
        return ats[-1]
    query = rest.find("?")
    before_query = [i for i in ats if query < 0 or i < query]
    return (before_query or ats)[-1]


def redact_uri(uri: str) -> str:
    """Return ``uri`` fit for logs and messages: the password and every secret option
    (``*Password``, ``authMechanismProperties``) replaced by ``***``, even in a URI that
    pymongo itself refuses (an unescaped ``@`` in the password).

    Built on pymongo's own parser: whatever ``pymongo.uri_parser.parse_uri`` reads as the
    password or a secret option is also removed wherever it still appears."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    at = _credentials_end(rest)
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}{':' + REDACTED if colon else ''}@{rest}"
    rest = _SECRET_OPTION_RE.sub(lambda m: m["key"] + REDACTED, rest)
    safe = f"{scheme}://{rest}"
    for secret in _parsed_secrets(uri):
        for form in {secret, urllib.parse.quote_plus(secret), urllib.parse.quote(secret)}:
            if len(form) >= 3:  # never blank out one-letter fragments of the URI
                safe = safe.replace(form, REDACTED)
    return safe


def _parsed_secrets(uri: str) -> list[str]:
    """The password and secret option values that pymongo's parser finds in ``uri``."""
    plain = uri.replace("mongodb+srv://", "mongodb://", 1)  # the same syntax, without DNS lookups
    head, mark, query = plain.partition("?")
    if mark:  # a repeated option makes pymongo warn even with warn=False: parse the first one
        kept: dict[str, str] = {}
        for n, part in enumerate(query.replace(";", "&").split("&")):
            name = part.partition("=")[0].lower()
            kept.setdefault(name if name != "readpreferencetags" else f"{name}{n}", part)
        plain = head + mark + "&".join(kept.values())
    try:
        parsed = pymongo.uri_parser.parse_uri(plain, validate=False, warn=False)
    except Exception:  # noqa: BLE001 - a URI pymongo refuses: the textual redaction stands
        return []
    secrets = [parsed.get("password") or ""]
    for key, value in (parsed.get("options") or {}).items():
        if key.lower().endswith("password") or key.lower() == "authmechanismproperties":
            secrets.append(value if isinstance(value, str) else "")
    return [s for s in secrets if s]


def env_seconds(name: str, default: float, ok: Callable[[float], bool], expected: str) -> float:
    """Seconds from environment variable ``name`` (``default`` when unset or empty); a value
    that is not a finite number passing ``ok`` is a :class:`ConfigError` saying ``expected``."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{name}={raw!r}: expected {expected}")
    return value


def outage_budget() -> float:
    """Seconds to keep retrying an unreachable server: $HYPERFLEET_OUTAGE_S or the default."""
    return env_seconds(
        "HYPERFLEET_OUTAGE_S",
        defaults.OUTAGE_S,
        lambda v: 0 <= v <= MAX_OUTAGE_S,
        f"a number of seconds from 0 to {MAX_OUTAGE_S:.0f}",
    )


def auth_error(safe_uri: str, error: Exception | None = None) -> AuthError:
    """The one line for missing, wrong and insufficient credentials alike."""
    return AuthError(
        f"MongoDB at {safe_uri} refused access (missing or wrong credentials, or a user without "
        "the readWrite role): put the user and password in the URI, e.g. "
        "mongodb://USER:PASSWORD@HOST:PORT/?authSource=admin (password URL-encoded), preferably "
        "through $HYPERFLEET_MONGO"
    )


def is_auth_failure(error: Exception) -> bool:
    """Whether ``error`` means the server refused our credentials. pymongo reports a failed
    handshake on the first operation as code 18, then as a server-selection timeout that names
    it; an unauthenticated client's operation fails with code 13."""
    if isinstance(error, pymongo.errors.OperationFailure):
        return error.code in AUTH_CODES
    text = str(error)
    return "AuthenticationFailed" in text or "'code': 18" in text


def is_tls_failure(error: Exception) -> bool:
    """Whether a connection failure was a TLS handshake that failed (certificate, protocol)."""
    text = str(error)
    return any(mark in text for mark in ("SSL", "TLS", "CERTIFICATE_VERIFY_FAILED", "certificate"))


def tls_error(safe_uri: str, error: Exception) -> StoreUnavailable:
    reason = str(error).split(" (configured timeouts")[0].split(", Timeout:")[0]
    return StoreUnavailable(
        f"TLS handshake with MongoDB at {safe_uri} failed ({reason[:200]}); check tlsCAFile "
        "(the CA that signed the server's certificate) and the host name in the certificate, "
        "or drop tls=true if the server does not use TLS"
    )


def check_names(uri: str, db: str) -> None:
    """Raise :class:`ConfigError` for a URI that is not ``mongodb://``/``mongodb+srv://`` or a
    database name MongoDB would refuse."""
    if not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError(
            f"malformed MongoDB URI {redact_uri(uri)!r}: "
            "it must start with mongodb:// or mongodb+srv://"
        )
    if not db or any(c in db for c in '/\\. "$'):
        raise ConfigError(f"invalid database name {db!r}: use letters, digits, '-' and '_'")


#: what pymongo may raise for a bad URI or option besides its own errors (a validator's
#: ``TypeError``, ``KeyError`` for an unknown enum value, ``OSError`` for a missing CA file)
_URI_ERRORS = (
    pymongo.errors.ConfigurationError,
    pymongo.errors.InvalidURI,
    ValueError,
    TypeError,
    KeyError,
    OSError,
)


def open_client(uri: str, timeout_s: float) -> pymongo.MongoClient:
    """A client for ``uri`` (no round trip yet); a malformed URI is a :class:`ConfigError`."""
    if _cut_by_credentials(uri):
        raise ConfigError(f"malformed MongoDB URI {redact_uri(uri)!r}: {UNESCAPED_CREDENTIALS}")
    _check_uri_options(uri)
    _exit_without_joining_monitors()
    try:
        return pymongo.MongoClient(
            uri,
            serverSelectionTimeoutMS=int(timeout_s * 1000),
            connectTimeoutMS=int(timeout_s * 1000),
            appname="hyperfleet",
        )
    except _URI_ERRORS as e:
        raise ConfigError(
            f"malformed MongoDB URI {redact_uri(uri)!r}: {_safe_reason(uri, e)}"
        ) from None


#: why a URI whose user name or password holds ``/``, ``?`` or ``#`` is refused
UNESCAPED_CREDENTIALS = (
    "the user name or password holds an unescaped '/', '?' or '#'; "
    "URL-encode it (urllib.parse.quote_plus)"
)


def _cut_by_credentials(uri: str) -> bool:
    """Whether an unescaped ``/`` in the user name or password cut ``uri`` where pymongo reads
    it: pymongo ends the host list at the first ``/``, so the rest of the password became the
    database name ("Bad database name"), or a database name holding the ``@`` and the real host
    while pymongo took the user name for a host (``u:12/34@host``: port 12 of host ``u``)."""
    rest = uri.partition("://")[2]
    at = _credentials_end(rest)
    if at < 0 or "/" not in rest[:at] or "?" in rest[: rest.find("/")]:
        return False
    plain = uri.replace("mongodb+srv://", "mongodb://", 1)  # no DNS lookups
    try:
        parsed = pymongo.uri_parser.parse_uri(plain, validate=False, warn=False)
    except Exception:  # noqa: BLE001 - pymongo refuses the URI the password cut
        return True
    return "@" in (parsed.get("database") or "")


def _exit_without_joining_monitors() -> None:
    """At interpreter exit pymongo stops and joins its monitor threads, each of which sleeps in
    steps of half a second: every short command (``status``, ``show``, ...) spent ~0.5 s of its
    ~0.7 s exiting. The threads are daemon threads that hold nothing to flush (every write was
    acknowledged before the command returned), so the process exits without that join."""
    try:
        from pymongo.synchronous import monitor
    except ImportError:  # a pymongo without that module: keep its default
        return
    shutdown = getattr(monitor, "_shutdown_resources", None)
    if shutdown is not None:
        atexit.unregister(shutdown)


def _check_uri_options(uri: str) -> None:
    """Refuse an invalid option of ``uri`` (``tls=maybe``, ``authMechanism=BOGUS``, an option
    given twice, an unknown compressor) with one line.

    pymongo only warns about such an option and goes on without it. The check parses the
    options with pymongo's own validator (``warn=False`` makes it raise) instead of turning
    warnings into errors: ``warnings.catch_warnings`` changes process-wide state, and two
    threads opening clients at once could leave every warning an error for good. pymongo cuts
    the options at the URI's first ``?``; when they are refused and the password holds an
    unescaped ``/``, ``?`` or ``#``, the options came out of the password: that is what is said.
    """
    rest = uri.partition("://")[2]
    query = rest.partition("?")[2]
    if not query:
        return

    def refuse(reason: str) -> ConfigError:
        at = _credentials_end(rest)
        if at >= 0 and any(c in rest[:at] for c in "?#/"):
            reason = UNESCAPED_CREDENTIALS
        return ConfigError(f"malformed MongoDB URI {redact_uri(uri)!r}: {reason}")

    # first what pymongo would only warn about (even with warn=False)
    seen: set[str] = set()
    for part in query.replace(";", "&").split("&"):
        key, _, value = part.partition("=")
        name = key.lower()
        if name in seen and name != "readpreferencetags":
            raise refuse(f"option {_known(key)}given twice")
        seen.add(name)
        if name == "compressors":
            problem = _compressor_problem(value)
            if problem:
                raise refuse(problem)
    try:
        pymongo.uri_parser.split_options(query, validate=True, warn=False)
    except _URI_ERRORS as e:
        raise refuse(f"invalid option {_bad_option(query)}({_safe_reason(uri, e)})") from None


def _known(key: str) -> str:
    """``'key '`` when pymongo knows the option ``key`` (never echo what may be a secret)."""
    return key + " " if key.lower() in pymongo.common.URI_OPTIONS_VALIDATOR_MAP else ""


def _compressor_problem(value: str) -> str:
    """Why pymongo would drop a compressor of ``value`` (unknown, or its package missing), or
    ``''``; checked here because pymongo's own check warns even with ``warn=False``."""
    import importlib.util

    packages = {"zlib": None, "snappy": ("snappy", "python-snappy"), "zstd": ("zstandard",) * 2}
    for name in urllib.parse.unquote(value).split(","):
        if name not in packages:
            return f"unsupported compressor (choose from {', '.join(packages)})"
        needs = packages[name]
        if needs is not None and importlib.util.find_spec(needs[0]) is None:
            return f"compressor {name} needs a package: pip install {needs[1]}"
    return ""


def _bad_option(query: str) -> str:
    """The name of the first option of ``query`` pymongo refuses on its own, as ``'name '``;
    only a name pymongo knows is given back. pymongo cuts the options at the URI's first ``?``:
    with an unescaped password that is part of the password, which no message may show."""
    for part in query.replace(";", "&").split("&"):
        try:
            pymongo.uri_parser.split_options(part, validate=True, warn=False)
        except _URI_ERRORS:
            return _known(part.partition("=")[0])
    return ""


def _safe_reason(uri: str, error: BaseException) -> str:
    """``error``'s message on one line, with any secret of ``uri`` removed."""
    text = " ".join(str(error).split())
    for secret in _parsed_secrets(uri):
        text = text.replace(secret, REDACTED)
    return text[:300]


def check_reachable(client: pymongo.MongoClient, db: str, safe_uri: str, timeout_s: float) -> None:
    """``ping`` the server and read from the database once (a server with ``--auth`` answers
    ping without credentials; a read needs them); failures become the store's errors: missing
    and wrong credentials one :class:`AuthError`, a failed TLS handshake a TLS message."""
    try:
        client.admin.command("ping")
        client[db]["experiments"].find_one({}, {"_id": 1})
    except pymongo.errors.OperationFailure as e:
        if is_auth_failure(e):
            raise auth_error(safe_uri, e) from e
        raise StoreUnavailable(f"MongoDB at {safe_uri} answered ping with an error: {e}") from e
    except pymongo.errors.ConnectionFailure as e:
        if is_auth_failure(e):
            raise auth_error(safe_uri, e) from e
        if is_tls_failure(e) or _tls_refused(client):
            raise tls_error(safe_uri, e) from e
        raise ServerUnreachable(
            f"cannot reach MongoDB at {safe_uri} within {timeout_s:.0f} s; is the server "
            "running? (`hyperfleet server` starts an embedded one)",
            reason=_unreachable_reason(e),
        ) from e


def _tls_refused(client: pymongo.MongoClient) -> bool:
    """Whether ``client`` asked for TLS and a server listens at one of its hosts: then the
    failure was the TLS handshake (a server without TLS), although pymongo's error may only say
    that no server was selected in time or that the connection closed."""
    if getattr(client.options.pool_options, "_ssl_context", None) is None:
        return False
    for host, port in client.topology_description.server_descriptions():
        try:
            socket.create_connection((host, port or 27017), timeout=1.0).close()
            return True
        except OSError:
            continue
    return False


class ServerUnreachable(StoreUnavailable):
    """No server answered (nothing listening, a timeout, a name that does not resolve yet):
    it may be starting or restarting. ``reason`` is pymongo's short cause."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _unreachable_reason(e: Exception) -> str:
    text = str(e).split(", Timeout:")[0].split(" (configured timeouts")[0]
    return text[:300]


def wait_until_reachable(
    client: pymongo.MongoClient, db: str, safe_uri: str, timeout_s: float, wait_s: float
) -> None:
    """:func:`check_reachable`, waiting up to ``wait_s`` for a server that does not answer yet
    (a worker or coordinator started, or restarted by its supervisor, while the database is
    down or restarting); one warning says so at once. A host name that does not resolve is
    waited for too (Docker's and Kubernetes' DNS drop a restarting server's name); refused
    credentials and TLS failures are not."""
    started = time.monotonic()
    warned = False
    while True:
        try:
            check_reachable(client, db, safe_uri, timeout_s)
        except ServerUnreachable as e:
            waited = time.monotonic() - started
            if waited >= wait_s:
                if warned:
                    raise ServerUnreachable(
                        f"cannot reach MongoDB at {safe_uri}: waited {waited:.0f} s "
                        f"($HYPERFLEET_OUTAGE_S); last error: {e.reason}; start the server "
                        "(`hyperfleet server` starts an embedded one) or fix the URI, and rerun",
                        reason=e.reason,
                    ) from e
                raise
            if not warned:
                warned = True
                logger.warning(
                    "cannot reach MongoDB at %s yet (%s); waiting up to %.0f s for it "
                    "($HYPERFLEET_OUTAGE_S); Ctrl-C to stop",
                    safe_uri,
                    e.reason,
                    wait_s,
                )
            time.sleep(min(1.0, max(0.0, wait_s - waited)))
            continue
        if warned:
            logger.warning(
                "MongoDB at %s answers after %.1f s", safe_uri, time.monotonic() - started
            )
        return


def check_read_write(client: pymongo.MongoClient, db: str, safe_uri: str) -> None:
    """Prove that this client may read and write database ``db``: read the ``workers`` registry,
    write a probe row there (state ``stopped``: no listing of live workers shows it) and delete
    it. For ``worker --check`` (container healthchecks); raises :class:`AuthError` or
    :class:`StoreUnavailable` with one line."""
    probe_id = f"hyperfleet-check-{uuid.uuid4().hex[:12]}"
    workers = client[db]["workers"]
    try:
        workers.find_one({}, {"_id": 1})
        workers.insert_one({"_id": probe_id, "id": probe_id, "state": "stopped", "probe": True})
        workers.delete_one({"_id": probe_id})
    except pymongo.errors.OperationFailure as e:
        if is_auth_failure(e):
            raise auth_error(safe_uri, e) from e
        reason = (e.details or {}).get("errmsg") or str(e)
        raise StoreUnavailable(
            f"MongoDB at {safe_uri} refused to write to database {db!r} ({reason[:200]}); "
            "give the user the readWrite role on it"
        ) from e
    except pymongo.errors.ConnectionFailure as e:
        if is_auth_failure(e):
            raise auth_error(safe_uri, e) from e
        raise StoreUnavailable(
            f"MongoDB at {safe_uri} stopped answering ({type(e).__name__}); is it running?"
        ) from e


def ping(uri: str, timeout_s: float = 0.3) -> bool:
    """Whether a MongoDB server answers at ``uri`` within ``timeout_s`` (an answer that asks
    for credentials counts: the server is up). Never raises; for readiness polls."""
    try:
        client = open_client(uri, timeout_s)
    except ConfigError:
        return False
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.OperationFailure:
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def create_user(uri: str, name: str, password: str, *, role: str = "root") -> None:
    """Create user ``name`` with ``role`` on the ``admin`` database of the server at ``uri``
    (e.g. on an embedded server started without ``--auth``, before restarting it with it)."""
    client = open_client(uri, 5.0)
    try:
        roles = [{"role": role, "db": "admin"}]
        client.admin.command("createUser", name, pwd=password, roles=roles)
    except pymongo.errors.PyMongoError as e:
        raise StoreUnavailable(f"cannot create user {name!r} at {redact_uri(uri)}: {e}") from e
    finally:
        client.close()


#: once an outage has used up its budget, each further operation gets one try this long
LAST_TRY_S = 0.5


def _attempt_limit(store: Any, since: float | None, now: float) -> float | None:
    """How long one attempt may take (``pymongo.timeout``), or None for the client's own
    limits: during an outage, what is left of its budget (at least ``LAST_TRY_S``); outside
    one, the budget itself where it is shorter than the client's server-selection timeout (so a
    small budget is not overrun by waiting for a server)."""
    budget = float(store.outage_s)
    if since is not None:
        return max(LAST_TRY_S, budget - (now - since))
    options = getattr(getattr(store, "client", None), "options", None)
    selection = getattr(options, "server_selection_timeout", None)
    if isinstance(selection, (int, float)) and 0 < budget < selection:
        return max(LAST_TRY_S, budget)
    return None


def retrying(method: Callable[..., T]) -> Callable[..., T]:
    """Retry ``method`` on connection failures while the store's outage budget lasts.

    One budget per outage: an outage starts with the first failing attempt (when that attempt
    began) and ends with the first success; it is shared by every operation and thread of the
    store, so operations after the budget is spent (a worker unregistering on its way out)
    get one short try each instead of a fresh budget. Safe because every store write is
    idempotent or fenced: a write whose reply was lost and that is sent again either changes
    nothing or reports the lost fence. Authentication failures become :class:`AuthError` at
    once; an outage longer than the budget :class:`StoreUnavailable`, with its real duration.

    Besides connection failures, an operation that ran out of its time (``e.timeout``: the
    server's ExecutionTimeout for an attempt's deadline) or lost its cursor to a restarted
    server (CursorNotFound) is an outage too. A retrying method called inside another (in the
    same thread) runs once: the outermost call retries the whole operation under one deadline,
    where nested deadlines expired each other (ExecutionTimeout) and nested loops stacked.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        if getattr(_nesting, "inside", False):
            return method(self, *args, **kwargs)
        _nesting.inside = True
        try:
            return _retry(method, self, args, kwargs)
        finally:
            _nesting.inside = False

    return wrapper


_nesting = threading.local()  #: whether this thread is inside a retrying call


def _is_outage(e: pymongo.errors.PyMongoError) -> bool:
    """A failure that waiting for the server can cure (auth and TLS failures are sorted out
    before this is asked)."""
    if isinstance(e, (pymongo.errors.ConnectionFailure, pymongo.errors.CursorNotFound)):
        return True
    return bool(getattr(e, "timeout", False))


def _retry(method: Callable[..., T], self: Any, args: Any, kwargs: Any) -> T:
    # the store's shared handles hold the outage state (a part, or the store, has ``mongo``)
    state = getattr(self, "mongo", self)
    delay = 0.2
    while True:
        attempt = time.monotonic()
        since: float | None = state.outage_since
        limit = _attempt_limit(state, since, attempt)
        try:
            if limit is None:
                result = method(self, *args, **kwargs)
            else:
                with pymongo.timeout(limit):
                    result = method(self, *args, **kwargs)
        except pymongo.errors.PyMongoError as e:
            if is_auth_failure(e):  # a refused handshake is no outage: waiting cannot help
                raise auth_error(state.safe_uri, e) from e
            if not _is_outage(e):
                raise
            now = time.monotonic()
            if since is None:
                since = attempt
                state.outage_since = attempt
                logger.warning(
                    "lost contact with MongoDB at %s (%s); retrying for up to %.0f s",
                    state.safe_uri,
                    type(e).__name__,
                    state.outage_s,
                )
            down = now - since
            if down >= state.outage_s:
                raise StoreUnavailable(
                    f"MongoDB at {state.safe_uri} unreachable for {down:.1f} s "
                    f"(last error: {type(e).__name__}: {_unreachable_reason(e)}); nothing was "
                    "lost: start the server again and rerun the same command or script to "
                    "continue"
                ) from e
            time.sleep(max(0.0, min(delay, state.outage_s - down)))
            delay = min(delay * 2, 5.0)
            continue
        if state.outage_since is not None:
            state.outage_since = None
            down = time.monotonic() - (since if since is not None else attempt)
            logger.warning("MongoDB at %s reachable again after %.1f s", state.safe_uri, down)
            for listener in getattr(state, "outage_listeners", ()):
                listener(down)  # the reaper must not charge this outage to a trial
        return result
