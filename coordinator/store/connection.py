"""Reaching MongoDB: client options, the outage budget, retries and error translation.

Low-level pymongo errors are translated here, once, at the boundary: callers of the store only
ever see :class:`~coordinator.errors.StoreUnavailable` (unreachable for longer than the outage
budget), :class:`~coordinator.errors.AuthError` (credentials refused) or
:class:`~coordinator.errors.ConfigError` (a malformed URI or database name). Passwords never
reach a log line or a message: every URI shown is :func:`redact_uri`'d.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pymongo
import pymongo.errors

from coordinator import defaults
from coordinator.errors import AuthError, ConfigError, StoreUnavailable

logger = logging.getLogger("coordinator.store")

#: MongoDB's error code for failed authentication
AUTH_FAILED = 18

T = TypeVar("T")

_PASSWORD_RE = re.compile(r"(?P<head>mongodb(?:\+srv)?://[^:/@]+:)(?P<pw>[^@]*)(?P<at>@)")


def redact_uri(uri: str) -> str:
    """Return ``uri`` with its password replaced by ``***`` (for logs and messages)."""
    return _PASSWORD_RE.sub(r"\g<head>***\g<at>", uri)


def outage_budget() -> float:
    """Seconds to keep retrying an unreachable server: $HYPERFLEET_OUTAGE_S or the default."""
    raw = os.environ.get("HYPERFLEET_OUTAGE_S", "")
    try:
        return float(raw) if raw else defaults.OUTAGE_S
    except ValueError:
        raise ConfigError(f"HYPERFLEET_OUTAGE_S={raw!r} is not a number of seconds") from None


def auth_error(safe_uri: str, error: Exception) -> AuthError:
    return AuthError(
        f"MongoDB at {safe_uri} refused the credentials; "
        "check the user, password and authSource in the URI"
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


def open_client(uri: str, timeout_s: float) -> pymongo.MongoClient:
    """A client for ``uri`` (no round trip yet); a malformed URI is a :class:`ConfigError`."""
    try:
        return pymongo.MongoClient(
            uri,
            serverSelectionTimeoutMS=int(timeout_s * 1000),
            connectTimeoutMS=int(timeout_s * 1000),
            appname="hyperfleet",
        )
    except (pymongo.errors.ConfigurationError, pymongo.errors.InvalidURI, ValueError) as e:
        raise ConfigError(f"malformed MongoDB URI {redact_uri(uri)!r}: {e}") from e


def check_reachable(client: pymongo.MongoClient, db: str, safe_uri: str, timeout_s: float) -> None:
    """``ping`` the server and the database once; failures become the store's errors."""
    try:
        client.admin.command("ping")
        client[db].command("ping")
    except pymongo.errors.OperationFailure as e:
        if e.code == AUTH_FAILED:
            raise auth_error(safe_uri, e) from e
        raise StoreUnavailable(f"MongoDB at {safe_uri} answered ping with an error: {e}") from e
    except pymongo.errors.ConnectionFailure as e:
        raise StoreUnavailable(
            f"cannot reach MongoDB at {safe_uri} within {timeout_s:.0f} s; is the server "
            "running? (`hyperfleet server` starts an embedded one)"
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


def retrying(method: Callable[..., T]) -> Callable[..., T]:
    """Retry ``method`` on connection failures for up to ``self.outage_s`` seconds.

    Safe because every store write is idempotent or fenced: a write whose reply was lost and
    that is sent again either changes nothing or reports the lost fence. Authentication failures
    become :class:`AuthError` at once; an outage longer than the budget :class:`StoreUnavailable`.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        started = None
        delay = 0.2
        while True:
            try:
                result = method(self, *args, **kwargs)
            except pymongo.errors.OperationFailure as e:
                if e.code == AUTH_FAILED:
                    raise auth_error(self.safe_uri, e) from e
                raise
            except pymongo.errors.ConnectionFailure as e:
                now = time.monotonic()
                if started is None:
                    started = now
                    logger.warning(
                        "lost contact with MongoDB at %s (%s); retrying for up to %.0f s",
                        self.safe_uri,
                        type(e).__name__,
                        self.outage_s,
                    )
                if now - started >= self.outage_s:
                    raise StoreUnavailable(
                        f"MongoDB at {self.safe_uri} unreachable for {now - started:.0f} s "
                        f"(last error: {type(e).__name__}); nothing was lost: start the server "
                        "again and rerun the same command to continue"
                    ) from e
                time.sleep(min(delay, self.outage_s - (now - started)))
                delay = min(delay * 2, 5.0)
                continue
            if started is not None:
                logger.warning(
                    "MongoDB at %s reachable again after %.1f s",
                    self.safe_uri,
                    time.monotonic() - started,
                )
            return result

    return wrapper
