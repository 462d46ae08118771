"""Values as the store keeps them: BSON-storable, readable in the mongo shell, naive UTC dates."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId


def utcnow() -> dt.datetime:
    """Naive UTC now, the form pymongo returns dates in (for client-side bookkeeping only;
    liveness always uses the database clock)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def usable_date(value: Any) -> bool:
    """Whether ``value`` is a date a lease, a heartbeat or an outage can have (1970 to 2200):
    another writer's junk (year 1, year 9999) must not reach date arithmetic."""
    return isinstance(value, dt.datetime) and (
        dt.datetime(1970, 1, 1) <= value.replace(tzinfo=None) < dt.datetime(2200, 1, 1)
    )


def to_bson(value: Any) -> Any:
    """``value`` made storable and readable in the mongo shell: numpy scalars and arrays become
    Python numbers and lists, tuples become lists, keys become strings; anything else unknown
    becomes its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, dt.datetime, ObjectId)):
        return value
    if isinstance(value, dict):
        return {str(k): to_bson(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_bson(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalar
    if callable(item) and getattr(value, "shape", None) == ():
        return to_bson(item())
    tolist = getattr(value, "tolist", None)  # numpy array
    if callable(tolist):
        return to_bson(tolist())
    return repr(value)
