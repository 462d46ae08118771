"""Values from outside shown in a bounded line: the one helper for every string that a shared
database (an exp key, a worker's host, a trial's tid or error) or user code (a space's label,
an exception's text) puts into output or a log.

A database that several teams share holds whatever anyone wrote: one document with a 1 MB
``exp_key`` made ``hyperfleet status`` print a megabyte and every worker log a megabyte-long
line. Anything such a value reaches is passed through :func:`shown` where it is printed or
logged (never where it is stored or compared): at most ``limit`` characters, control and
direction characters escaped (a key cannot forge a log line), and the full length said when
it was cut.
"""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Mapping
from typing import Any

#: the default bound, in characters, of one value in a message or a log line
SHOWN_CHARS = 80

_SCALARS = (int, float, bool, type(None))
_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = _repr.maxother = SHOWN_CHARS
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6


def shown(value: Any, limit: int = SHOWN_CHARS, *, bare: bool = False) -> str:
    """``value`` for one line of output or a log: a string as its ``repr`` (``bare``: as it
    is, for a table cell), a number as ``str``, anything else as a bounded ``repr``;
    non-printable characters escaped; cut to ``limit`` characters, with ``…(N characters)``
    saying how long it was."""
    quoted = not bare
    if isinstance(value, str):
        head = value[: limit + 1]  # never escape or copy more than is shown
        text = repr(head) if quoted else _printable(head)
        size = len(value)
    else:
        text = str(value) if isinstance(value, _SCALARS) else _printable(_repr.repr(value))
        size = len(text)
    if size <= limit and len(text) <= limit + (2 if quoted else 0):
        return text
    return f"{text[:limit]}…({size} characters)"


def _printable(text: str) -> str:
    """``text`` with every non-printable character (newline, NUL, right-to-left override)
    written as its escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


#: the bound of one value in a log line (an error message may say more than a name)
LOGGED_CHARS = 300


class BoundedLogValues(logging.Filter):
    """Passes every value of a log record through :func:`shown` (``LOGGED_CHARS``) before it
    is formatted, and bounds a message built before logging (an f-string): the one guard of
    a log handler, so no module's log line can carry a megabyte from a shared database.
    Numbers pass unchanged (``%d`` and ``%.1f`` still apply)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and len(record.msg) > 4 * LOGGED_CHARS:
            record.msg = shown(record.msg, 4 * LOGGED_CHARS, bare=True)
        if isinstance(record.args, tuple):
            record.args = tuple(_bounded(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: _bounded(v) for k, v in record.args.items()}
        return True


def _bounded(value: Any) -> Any:
    if isinstance(value, _SCALARS):
        return value
    text = value if isinstance(value, str) else str(value)
    if len(text) <= LOGGED_CHARS and text.isprintable():
        return value
    return shown(text, LOGGED_CHARS, bare=True)
