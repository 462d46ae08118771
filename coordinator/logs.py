"""The one log format of every hyperfleet process: a timestamp, the level and the logger on every
line, values from the database bounded (:class:`coordinator.shown.BoundedLogValues`).

The CLI sets it up (``hyperfleet --log-level``); a worker's trial child, a spawned process that
inherits no handler, sets it up again with the worker's level. Without that the child's warnings
(the store's "lost contact with MongoDB" lines during an outage) went to Python's last-resort
handler: the bare message, no timestamp, in the middle of the worker's timestamped log.
"""

from __future__ import annotations

import logging
import sys

from coordinator.shown import BoundedLogValues

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: a worker's trial child: its lines (the store's outage lines too) told from the worker's own
CHILD_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s (trial process): %(message)s"
#: libraries whose INFO/DEBUG lines are noise at any level of ours
NOISY = ("pymongo", "hyperopt", "absl", "tensorflow")


def configure(level: int | str, fmt: str = LOG_FORMAT) -> None:
    """Log to stderr at ``level`` (a number or a name such as ``"INFO"``) in ``fmt``."""
    if isinstance(level, str):
        level = getattr(logging, level.upper())
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, BoundedLogValues) for f in handler.filters):
            handler.addFilter(BoundedLogValues())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
