r"""The trial store's contract suite (:mod:`coordinator.store.base`), run against every backend.

It always runs on the embedded SecantusDB server. To certify a real MongoDB (a standalone
server, a replica set, Atlas), name it in ``HYPERFLEET_TEST_MONGO``; every test then also runs
against it, in a fresh database that is dropped afterwards::

    HYPERFLEET_TEST_MONGO=mongodb://host/?replicaSet=rs0 \
        .venv/bin/python -m pytest tests/coordinator/store -q

The user in the URI needs ``readWrite`` on ``t_*`` databases and ``dropDatabase``.
"""
