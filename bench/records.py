"""The JSON line every baseline script prints (stdlib only: the baselines run in their own
virtualenvs, with bench/ as their import path)."""

from __future__ import annotations

import json


def print_rate(system: str, n: int, done: int, wall: float, procs: int) -> None:
    """Print trials/s and per-trial overhead (wall x processes / trials, in ms) as one line."""
    print(
        json.dumps(
            {
                "system": system,
                "n": n,
                "done": done,
                "seconds": round(wall, 3),
                "trials_per_s": round(done / wall, 2),
                "overhead_ms": round(wall * procs / max(1, done) * 1000, 2),
            }
        )
    )
