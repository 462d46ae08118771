"""hyperfleet's coordinator: the trial store, the search loop, the embedded server and the CLI."""

from __future__ import annotations

__version__ = "0.1.0"
