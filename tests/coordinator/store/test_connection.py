"""The store's connection boundary: URIs, readiness, passwords kept out of messages."""

from __future__ import annotations

import contextlib
import threading
import warnings

import pytest

from coordinator.errors import ConfigError, StoreUnavailable
from coordinator.store import connect, ping, redact_uri


def with_options(uri: str, query: str) -> str:
    """``uri`` with the options of ``query`` added: after its own options if it has some (a
    ``$HYPERFLEET_TEST_MONGO`` like ``mongodb://h/?replicaSet=rs0``), replacing any it already
    sets (a second ``tls`` would be refused as given twice); else after a ``/``."""
    head, mark, own = uri.partition("?")
    if not mark and head.count("/") == 2:  # mongodb://host: no path yet
        head += "/"
    added = {part.partition("=")[0].lower() for part in query.split("&")}
    kept = [p for p in own.split("&") if p and p.partition("=")[0].lower() not in added]
    return f"{head}?{'&'.join([*kept, query])}"


@pytest.mark.parametrize(
    ("uri", "query", "expected"),
    [
        ("mongodb://h:1", "tls=maybe", "mongodb://h:1/?tls=maybe"),
        ("mongodb://h:1/", "tls=maybe", "mongodb://h:1/?tls=maybe"),
        ("mongodb://h:1/db", "w=1", "mongodb://h:1/db?w=1"),
        ("mongodb://h/?replicaSet=rs0", "tls=maybe", "mongodb://h/?replicaSet=rs0&tls=maybe"),
        (
            "mongodb://h/?tls=true&replicaSet=rs0",
            "TLS=maybe",
            "mongodb://h/?replicaSet=rs0&TLS=maybe",
        ),
    ],
)
def test_with_options_keeps_the_uris_own_options(uri: str, query: str, expected: str) -> None:
    """Issue 22 item 13: the suite appended ``/?option`` to URIs that already had options
    (``...?replicaSet=rs0/?tls=maybe``), three false failures against a replica set."""
    assert with_options(uri, query) == expected


def test_redact_uri_hides_password() -> None:
    uri = "mongodb://user:s3cret@db.example:27017/?authSource=admin"
    assert "s3cret" not in redact_uri(uri) and "user:***@" in redact_uri(uri)
    assert redact_uri("mongodb+srv://u:p@h/x") == "mongodb+srv://u:***@h/x"


@pytest.mark.parametrize("uri", ["http://localhost", "mongodb://host:notaport"])
def test_connect_rejects_malformed_uri(uri: str) -> None:
    with pytest.raises(ConfigError, match="malformed MongoDB URI"):
        connect(uri)


def test_connect_rejects_bad_database_name(backend_uri: str) -> None:
    with pytest.raises(ConfigError, match="invalid database name"):
        connect(backend_uri, "a.b")


def test_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(StoreUnavailable, match=r"cannot reach MongoDB at mongodb://u:\*\*\*@"):
        connect("mongodb://u:pw@127.0.0.1:9/", timeout_s=0.3)


def test_ping(backend_uri: str) -> None:
    assert ping(backend_uri, timeout_s=2)
    assert not ping("mongodb://127.0.0.1:9/", timeout_s=0.2)
    assert not ping("not a uri")


def test_opening_clients_from_threads_leaves_the_warning_filters_alone(backend_uri: str) -> None:
    """CI failure (stop 9): the URI option check turned warnings into errors with
    ``warnings.catch_warnings``, which is process-wide; threads opening clients at once could
    leave every warning an error. The check now raises without touching the filters."""
    before = list(warnings.filters)

    def open_some() -> None:
        for _ in range(10):
            with contextlib.suppress(ConfigError):
                connect(with_options(backend_uri, "tls=maybe"))
            connect(backend_uri).close()

    threads = [threading.Thread(target=open_some) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(warnings.filters) == before


@pytest.mark.parametrize(
    ("option", "named"), [("tls=maybe", "tls"), ("w=1&journal=perhaps", "journal")]
)
def test_invalid_option_is_named(backend_uri: str, option: str, named: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid option {named} "):
        connect(with_options(backend_uri, option))


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("zlibCompressionLevel=abc", "invalid option zlibCompressionLevel"),  # was a TypeError
        ("datetime_conversion=x", "invalid option datetime_conversion"),  # was a KeyError
        ("tlsCAFile=/nonexistent/ca.pem", "invalid option tlsCAFile"),  # was an OSError
        ("tls=false&tls=true", "option tls given twice"),  # pymongo warns, keeps the last
        ("compressors=bogus", "unsupported compressor"),  # pymongo warns, drops it
    ],
)
def test_bad_options_are_one_line(query: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        connect(f"mongodb://127.0.0.1:9/?{query}", timeout_s=0.2)


@pytest.mark.parametrize(
    "uri", ["mongodb://u:hunter2?tls=maybe@127.0.0.1:9/", "mongodb://u:p?ss@127.0.0.1:9/?tls=true"]
)
def test_options_cut_from_a_password_are_blamed_on_the_password(uri: str) -> None:
    """pymongo takes the options from the first '?', here inside the password: the message
    says to URL-encode the password, and names no option taken out of it."""
    with pytest.raises(ConfigError, match="password holds an unescaped") as caught:
        connect(uri, timeout_s=0.2)
    assert "hunter2" not in str(caught.value) and "tls" not in str(caught.value).split("@")[0]


def test_repeated_read_preference_tags_and_an_at_in_an_option_are_fine(backend_uri: str) -> None:
    tags = "readPreference=nearest&readPreferenceTags=dc:a&readPreferenceTags="
    connect(with_options(backend_uri, tags)).close()
    connect(with_options(backend_uri, "appName=alice@laptop")).close()


class _Flaky:
    """Retrying methods over no server at all: ``inner`` fails ``fails`` times with the given
    pymongo error (the errors pymongo raises; no server needed to tell how they are handled)."""

    safe_uri = "mongodb://flaky/"
    outage_s = 30.0
    outage_since: float | None = None  # the retry loop's state (the store keeps it in its handles)

    def __init__(self, error: Exception, fails: int) -> None:
        self.error, self.fails = error, fails
        self.outer_calls = self.inner_calls = 0

    def outer(self) -> str:
        self.outer_calls += 1
        return self.inner()

    def inner(self) -> str:
        self.inner_calls += 1
        if self.inner_calls <= self.fails:
            raise self.error
        return "ok"


def _flaky(error: Exception, fails: int) -> _Flaky:
    from coordinator.store.connection import retrying

    flaky = _Flaky(error, fails)
    flaky.outer = retrying(_Flaky.outer).__get__(flaky)  # type: ignore[method-assign]
    flaky.inner = retrying(_Flaky.inner).__get__(flaky)  # type: ignore[method-assign]
    return flaky


def test_a_nested_retrying_call_is_retried_by_the_outermost_only() -> None:
    """Nested retry loops stacked their waits, and nested deadlines expired each other
    (ExecutionTimeout, review finding): the inner call now fails through to the outer one,
    which retries the whole operation."""
    import pymongo.errors

    flaky = _flaky(pymongo.errors.AutoReconnect("down"), fails=2)
    assert flaky.outer() == "ok"
    assert (flaky.outer_calls, flaky.inner_calls) == (3, 3)


@pytest.mark.parametrize(
    "error",
    [
        "ExecutionTimeout",  # the server's answer to an attempt's expired deadline
        "CursorNotFound",  # a restarted server lost the cursor of a long read
        "NetworkTimeout",
        "WTimeoutError",
    ],
)
def test_timeouts_and_lost_cursors_are_outages(error: str) -> None:
    import pymongo.errors

    cls = getattr(pymongo.errors, error)
    flaky = _flaky(cls("gone", 50) if error != "NetworkTimeout" else cls("gone"), fails=1)
    assert flaky.inner() == "ok" and flaky.inner_calls == 2


def test_other_pymongo_errors_are_not_retried() -> None:
    import pymongo.errors

    flaky = _flaky(pymongo.errors.DuplicateKeyError("dup", 11000), fails=1)
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        flaky.inner()
    assert flaky.inner_calls == 1


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://u:ab/c$d@127.0.0.1:9",  # pymongo: "Bad database name"
        "mongodb://u:ab/cd@localhost/",  # pymongo: "Bad database name"
        "mongodb://u:12/34@127.0.0.1:9/",  # pymongo: host u, port 12, database "34@127"
    ],
)
def test_an_unescaped_slash_in_a_password_says_to_url_encode_it(uri: str) -> None:
    """Issue 22, item 11: pymongo ends the host list at the password's '/': "Bad database
    name", or a connection attempt to the user name taken for a host, with no word about
    percent-encoding."""
    with pytest.raises(ConfigError, match="password holds an unescaped '/'.*quote_plus"):
        connect(uri, timeout_s=0.2)


def test_a_slash_in_the_path_and_an_at_in_an_option_are_no_password() -> None:
    """The check above blames the password only for what pymongo misread: a database path and
    an ``@`` in an option value are left to pymongo (here: nothing listens, so unreachable)."""
    with pytest.raises(StoreUnavailable, match="cannot reach MongoDB"):
        connect("mongodb://127.0.0.1:9/db?appName=alice@laptop", timeout_s=0.2)


def test_tls_against_a_server_without_tls_says_the_handshake_failed() -> None:
    """Issue 22, item 11: ``tls=true`` against a server without TLS said "is the server
    running?" whenever pymongo's error did not name SSL (server selection ended before the
    handshake did, or the server closed the connection). A server listens there: the line
    says the TLS handshake failed. The listener answers nothing, as a server without TLS
    answers a TLS hello; selection gives up (0.3 s) before the handshake would (5 s)."""
    import socket

    import pymongo

    from coordinator.store.connection import check_reachable

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{port}/?tls=true",
        serverSelectionTimeoutMS=300,
        connectTimeoutMS=5000,
    )
    try:
        with pytest.raises(StoreUnavailable, match="TLS handshake with MongoDB at .* failed"):
            check_reachable(client, "db", f"mongodb://127.0.0.1:{port}/?tls=true", 0.3)
    finally:
        client.close()
        listener.close()
    with pytest.raises(StoreUnavailable, match="is the server running"):  # nothing listens
        connect(f"mongodb://127.0.0.1:{port}/?tls=true", timeout_s=0.3)
