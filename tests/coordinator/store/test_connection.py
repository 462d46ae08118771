"""The store's connection boundary: URIs, readiness, passwords kept out of messages."""

from __future__ import annotations

import contextlib
import threading
import warnings

import pytest

from coordinator.errors import ConfigError, StoreUnavailable
from coordinator.store import connect, ping, redact_uri


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
                connect(backend_uri.rstrip("/") + "/?tls=maybe")
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
        connect(f"{backend_uri.rstrip('/')}/?{option}")
