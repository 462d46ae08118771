"""``hyperfleet dashboard``: a small web app to watch searches live (and, when allowed, stop them).

* :mod:`~coordinator.dashboard.app` — the Starlette app: routes, error pages, the safety rules.
* :mod:`~coordinator.dashboard.cache` — each experiment's trials in memory, refreshed by an
  incremental cursor on the database clock (``mtime``).
* :mod:`~coordinator.dashboard.pages` — what each page shows (the CLI's summaries and rows).
* :mod:`~coordinator.dashboard.states` — how each trial state looks: one entry per state.
* :mod:`~coordinator.dashboard.serve` — binding, warnings, the printed URL, uvicorn.
* ``templates/`` (Jinja2, autoescaped), ``static/`` (plain JS and CSS; uPlot vendored under
  ``static/vendor/uplot`` with its MIT licence: no CDN, no Node build step).

Needs the ``dashboard`` extra (``pip install 'hyperfleet[dashboard]'``).
"""
