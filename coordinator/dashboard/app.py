"""The dashboard's web app: routes, the error pages, the safety rules.

Safety, in one place:

* **Read-only by default.** The two actions (cancel an experiment, requeue a running trial) are
  POSTs that answer 403 unless the app was made with ``allow_actions``. Each POST must carry the
  process's random token (a hidden form field, so other sites cannot forge one: they cannot read
  our pages) and, when the browser sends ``Origin``/``Referer``/``Sec-Fetch-Site``, come from
  this same origin.
* **Escaping.** Jinja2 autoescapes every template; data for scripts is embedded with ``tojson``
  (``<``, ``>``, ``&`` and ``'`` as ``\\u`` escapes, so ``</script>`` in a trial's error cannot
  end the block); scripts put database strings on the page only through ``textContent``. A
  Content-Security-Policy allows scripts from this origin only, as a second line.
* **Database trouble** is a readable 503 page (JSON for the polls), never a traceback; every URI
  shown is the redacted one.
* **DNS rebinding.** On a loopback address the app answers only ``Host`` names of this machine.
"""

from __future__ import annotations

import logging
import secrets
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from coordinator import defaults, inspect
from coordinator.dashboard import pages, states
from coordinator.dashboard.cache import Caches
from coordinator.errors import AuthError, ConfigError, HyperfleetError, StoreUnavailable
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import Lease, TrialStoreBase

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: seconds between the experiment page's polls (and the live regions' refreshes)
POLL_S = 2.0
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
_READ_ONLY = (
    "This dashboard is read-only. Restart it with --allow-actions to cancel experiments and "
    "requeue trials from the browser (or use `hyperfleet cancel`)."
)


class Dashboard:
    """The app's state: the store, the caches, the token, whether actions are allowed."""

    def __init__(
        self, store: TrialStoreBase, *, safe_uri: str, allow_actions: bool, **cache_options: Any
    ) -> None:
        self.store = store
        self.safe_uri = safe_uri
        self.allow_actions = allow_actions
        self.token = secrets.token_urlsafe(24)
        self.caches = Caches(store, **cache_options)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.globals.update(
            state_style=states.style,
            states_json=states.as_json(),
            quote=urllib.parse.quote,
            fmt=_fmt,
            poll_ms=int(POLL_S * 1000),
        )

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        html = self.env.get_template(name).render(
            request=request,
            safe_uri=self.safe_uri,
            db_name=getattr(self.store, "db_name", ""),
            allow_actions=self.allow_actions,
            token=self.token,
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)


def _fmt(value: Any) -> str:
    """A cell: floats to 6 significant digits, ``None`` as an em dash, the rest as ``str``."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# -- errors ---------------------------------------------------------------------------------------


def _trouble(error: BaseException) -> tuple[int, str, str] | None:
    """``(status, title, message)`` for an error a page should explain; ``None`` otherwise."""
    if isinstance(error, (StoreUnavailable, AuthError)):
        return 503, "The database is unavailable", str(error)
    if isinstance(error, ConfigError):
        return 404, "Not found", str(error)
    if isinstance(error, HyperfleetError):
        return 500, "hyperfleet error", str(error)
    # pymongo's own errors (only the store may import pymongo, so recognise them by module)
    if type(error).__module__.split(".")[0] in ("pymongo", "bson", "gridfs"):
        return 503, "The database answered with an error", f"{type(error).__name__}: {error}"
    return None


def _guarded(dash: Dashboard, request: Request, make: Callable[[], Response]) -> Response:
    """``make()``, with database and lookup trouble turned into a readable page."""
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - every error becomes a page, never a traceback
        known = _trouble(e)
        if known is None:
            logger.exception("dashboard page %s failed", request.url.path)
            known = (500, "Internal error", "The dashboard failed; see its log.")
        status, title, message = known
        return dash.render(request, "error.html", status, title=title, message=message)


def page(
    handler: Callable[[Dashboard, Request], Response],
) -> Callable[[Dashboard], Callable[[Request], Response]]:
    """An HTML endpoint (run in a thread: the store blocks); errors become a readable page."""

    def bind(dash: Dashboard) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            return _guarded(dash, request, lambda: handler(dash, request))

        return endpoint

    return bind


def api(
    handler: Callable[[Dashboard, Request], dict[str, Any]],
) -> Callable[[Dashboard], Callable[[Request], Response]]:
    """A JSON endpoint for the pages' polls: errors are ``{"error": message}`` with a status,
    the server time spent is a ``Server-Timing`` header."""

    def bind(dash: Dashboard) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                body, status = handler(dash, request), 200
            except Exception as e:  # noqa: BLE001 - the page shows the message and keeps polling
                known = _trouble(e)
                if known is None:
                    logger.exception("dashboard poll %s failed", request.url.path)
                    known = (500, "Internal error", "the dashboard failed; see its log")
                status, _title, message = known
                body = {"error": message}
            ms = (time.perf_counter() - started) * 1000
            headers = {**_SECURITY_HEADERS, "Server-Timing": f"app;dur={ms:.1f}"}
            return JSONResponse(body, status_code=status, headers=headers)

        return endpoint

    return bind


# -- pages ----------------------------------------------------------------------------------------


def _exp_key(request: Request) -> str:
    key = request.query_params.get("key")
    if not key:
        raise ConfigError("which experiment? add ?key=EXP_KEY to the address")
    return key


#: the range of a stored trial id (BSON's 64-bit integers)
_TID_MIN, _TID_MAX = -(2**63), 2**63 - 1


def parse_tid(raw: str) -> int:
    """A trial id from an address or a form; anything but a 64-bit integer is a
    :class:`ConfigError` that says why (a 404 page: no such trial can exist)."""
    short = raw if len(raw) <= 40 else raw[:39] + "…"
    try:
        tid = int(raw)
    except ValueError:
        raise ConfigError(f"trial id {short!r} is not a number") from None
    if not _TID_MIN <= tid <= _TID_MAX:
        raise ConfigError(f"trial id {short!r} is out of range (a 64-bit integer)")
    return tid


def _tid(request: Request) -> int:
    return parse_tid(request.query_params.get("tid", ""))


@page
def experiments_page(dash: Dashboard, request: Request) -> Response:
    rows = pages.experiments(dash.store, dash.caches)
    return dash.render(request, "experiments.html", experiments=rows, title="Experiments")


@page
def experiment_page(dash: Dashboard, request: Request) -> Response:
    key = _exp_key(request)
    exp = pages.experiment_doc(dash.store, key)
    cache = dash.caches.get(key)
    line = pages.summary(cache, exp, pages.worker_views(dash.store, cache.now))
    boot = {
        "key": key,
        "api": f"/api/trials?key={urllib.parse.quote(key, safe='')}",
        "poll_ms": int(POLL_S * 1000),
        "states": states.as_json(),
    }
    notice = {
        "cancelled": "Cancel requested: queued trials are cancelled, running ones stop at "
        "their next epoch."
    }.get(request.query_params.get("done", ""))
    return dash.render(
        request,
        "experiment.html",
        exp=exp,
        s=line,
        boot=boot,
        notice=notice,
        title=f"Experiment {key}",
        settings=sorted(inspect.flatten(exp.get("settings") or {}, "").items()),
    )


@page
def trial_page(dash: Dashboard, request: Request) -> Response:
    key, tid = _exp_key(request), _tid(request)
    doc = dash.store.get_trial(key, tid)
    if doc is None:
        raise ConfigError(f"no trial {tid} in experiment {key!r}")
    t = pages.trial(doc, key)
    notice = {
        "requeued": "Trial requeued: it is queued again; its worker drops it at its next write.",
    }.get(request.query_params.get("done", ""))
    return dash.render(request, "trial.html", t=t, notice=notice, title=f"Trial {tid} of {key}")


@page
def workers_page(dash: Dashboard, request: Request) -> Response:
    try:
        hours = float(request.query_params.get("hours", pages.TIMELINE_HOURS))
    except ValueError:
        hours = pages.TIMELINE_HOURS
    hours = min(max(hours, 0.05), 24 * 14)
    data = pages.workers_page(dash.store, dash.caches, hours=hours)
    return dash.render(request, "workers.html", w=data, title="Workers")


@page
def model_download(dash: Dashboard, request: Request) -> Response:
    key, tid = _exp_key(request), _tid(request)
    doc = dash.store.get_trial(key, tid)
    if doc is None:
        raise ConfigError(f"no trial {tid} in experiment {key!r}")
    data = dash.store.get_attachment(doc, defaults.MODEL_ATTACHMENT)
    if data is None:
        raise ConfigError(f"trial {tid} of {key!r} has no saved model")
    safe_key = "".join(c if c.isalnum() or c in "-_" else "_" for c in key)[:80]
    name = f"{safe_key}-trial{tid}.keras"
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}"', **_SECURITY_HEADERS},
    )


@api
def trials_api(dash: Dashboard, request: Request) -> dict[str, Any]:
    key = _exp_key(request)
    try:
        since = int(request.query_params.get("since", "0"))
    except ValueError:
        since = 0
    exp = pages.experiment_doc(dash.store, key)
    cache = dash.caches.get(key)
    workers = pages.worker_views(dash.store, cache.now)
    return pages.trials_payload(
        cache, exp, workers, since=since, token=request.query_params.get("cache")
    )


# -- actions --------------------------------------------------------------------------------------


def _same_origin(request: Request) -> bool:
    """Whether the browser says this POST comes from one of our own pages (headers a page
    cannot forge); requests without any of them (curl with the token) pass."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    host = request.headers.get("host", "")
    for header in ("origin", "referer"):
        value = request.headers.get(header)
        if value:
            return urllib.parse.urlsplit(value).netloc == host
    return True


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body())[:10_000].decode("utf-8", "replace")
    return {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}


def action(
    handler: Callable[[Dashboard, Request, dict[str, str]], str],
) -> Callable[[Dashboard], Callable[[Request], Any]]:
    """A POST action: refused (403) when read-only, from another origin, or without the token;
    its handler returns where to go next (303)."""

    def bind(dash: Dashboard) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            if not dash.allow_actions:
                return dash.render(
                    request, "error.html", 403, title="Read-only", message=_READ_ONLY
                )
            form = await _form(request)
            token_ok = secrets.compare_digest(form.get("token", ""), dash.token)
            if not token_ok or not _same_origin(request):
                return dash.render(
                    request,
                    "error.html",
                    403,
                    title="Refused",
                    message="This action did not come from this dashboard's own "
                    "page (missing token or another origin). Reload the page "
                    "and try again.",
                )

            def run() -> Response:
                return RedirectResponse(handler(dash, request, form), status_code=303)

            return await run_in_threadpool(_guarded, dash, request, run)

        return endpoint

    return bind


def _form_key(form: dict[str, str]) -> str:
    key = form.get("key")
    if not key:
        raise ConfigError("which experiment? the form carries no key")
    return key


@action
def cancel_action(dash: Dashboard, request: Request, form: dict[str, str]) -> str:
    key = _form_key(form)
    if dash.store.get_experiment(key) is None:
        raise ConfigError(f"no experiment {key!r} in database {dash.store.db_name!r}")
    n = dash.store.cancel_experiment(key)
    logger.info("dashboard: cancelled %s (%d queued trials)", key, n)
    dash.caches.get(key, refresh=False).refresh(force=True)
    return f"/exp?key={urllib.parse.quote(key, safe='')}&done=cancelled"


@action
def requeue_action(dash: Dashboard, request: Request, form: dict[str, str]) -> str:
    key = _form_key(form)
    tid = parse_tid(form.get("tid", ""))
    doc = dash.store.get_trial(key, tid)
    if doc is None:
        raise ConfigError(f"no trial {tid} in experiment {key!r}")
    if doc.get("state") != TrialState.RUNNING or not doc.get("owner"):
        raise ConfigError(
            f"trial {tid} is {inspect.state_name(doc.get('state'))}: only a running trial can be "
            "requeued (finished trials never change)"
        )
    new = dash.store.release(
        Lease.from_doc(doc), AttemptOutcome.REQUEUED, "requeued from the dashboard"
    )
    if new is None:
        raise ConfigError(f"trial {tid} changed while it was being requeued; look again")
    logger.info("dashboard: requeued trial %s of %s", tid, key)
    return f"/trial?key={urllib.parse.quote(key, safe='')}&tid={tid}&done=requeued"


# -- the app --------------------------------------------------------------------------------------


def loopback_hosts(host: str) -> list[str]:
    """``Host`` names a dashboard bound to loopback address ``host`` answers (any port)."""
    return sorted({"127.0.0.1", "localhost", host})


def create_app(
    store: TrialStoreBase,
    *,
    safe_uri: str,
    allow_actions: bool = False,
    allowed_hosts: list[str] | None = None,
    **cache_options: Any,
) -> Starlette:
    """The dashboard over ``store`` (see the module docstring for what keeps it safe)."""
    dash = Dashboard(store, safe_uri=safe_uri, allow_actions=allow_actions, **cache_options)
    routes = [
        Route("/", experiments_page(dash)),
        Route("/exp", experiment_page(dash)),
        Route("/trial", trial_page(dash)),
        Route("/workers", workers_page(dash)),
        Route("/model", model_download(dash)),
        Route("/api/trials", trials_api(dash)),
        Route("/actions/cancel", cancel_action(dash), methods=["POST"]),
        Route("/actions/requeue", requeue_action(dash), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(GZipMiddleware, minimum_size=2000)]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.dashboard = dash
    return app
