"""The contract suite's backends: every test here runs once per backend, ids in its name.

* ``embedded``: the session's SecantusDB server over TCP (always).
* ``mongo``: the MongoDB named by ``$HYPERFLEET_TEST_MONGO`` (only when it is set).

Each test gets a fresh database (``t_<random>``) that is dropped afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from coordinator.server import EmbeddedServer
from coordinator.store import TrialStore, connect

MONGO_ENV = "HYPERFLEET_TEST_MONGO"
BACKENDS = ["embedded", *(["mongo"] if os.environ.get(MONGO_ENV) else [])]


@pytest.fixture(params=BACKENDS)
def backend_uri(request: pytest.FixtureRequest, server: EmbeddedServer) -> str:
    """The URI of the backend under test."""
    return server.uri if request.param == "embedded" else os.environ[MONGO_ENV]


@pytest.fixture
def store(backend_uri: str, db_name: str) -> Iterator[TrialStore]:
    s = connect(backend_uri, db_name)
    yield s
    s.drop_database()
    s.close()
