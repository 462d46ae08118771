"""Values as the store keeps them: BSON-storable, readable in the mongo shell, naive UTC dates."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId


def utcnow() -> dt.datetime:
    """Naive UTC now, the form pymongo returns dates in (for client-side bookkeeping only;
    liveness always uses the database clock)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


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
