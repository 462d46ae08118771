"""The dashboard's web app: routes, the error pages, the safety rules.

Safety, in one place:

* **Private.** Every request first passes :class:`~coordinator.dashboard.guard.Guard`: security
  headers on every response, the Host check, bounded paths, query strings and bodies, the login
  (the secret of :mod:`~coordinator.dashboard.login`; ``hyperfleet dashboard`` always has one)
  and a per-client rate limit — all before any page code reads the database.
* **Read-only by default.** The two actions (cancel an experiment, requeue a running trial) are
  POSTs that answer 403 unless the app was made with ``allow_actions``, and for public viewers.
  Each POST must carry its session's action token (a hidden form field, so other sites cannot
  forge one: they cannot read our pages; a bearer request needs none) and, when the browser
  sends ``Origin``/``Referer``/``Sec-Fetch-Site``, come from this same origin. Every action,
  accepted or refused, is logged with who asked (session, address, local user) and what.
* **Escaping.** Jinja2 autoescapes every template; data for scripts is embedded with ``tojson``
  (``<``, ``>``, ``&`` and ``'`` as ``\\u`` escapes, so ``</script>`` in a trial's error cannot
  end the block); scripts put database strings on the page only through ``textContent``. A
  Content-Security-Policy allows scripts from this origin only, as a second line.
* **Database trouble** is a readable 503 page (JSON for the polls), never a traceback; every URI
  shown is the redacted one.
* **Bad input** (a non-number, NaN, infinity or out-of-range number in the address) is a 400
  page; an unknown experiment a 404 that echoes a bounded part of its key.
"""

from __future__ import annotations

import logging
import math
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
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from coordinator import defaults, inspect, rules
from coordinator.dashboard import pages, states
from coordinator.dashboard.cache import Caches, ExperimentList
from coordinator.dashboard.guard import Guard, HostPolicy, RateLimiter, client_key, describe
from coordinator.dashboard.login import OPEN, Identity, Login
from coordinator.errors import AuthError, ConfigError, HyperfleetError, StoreUnavailable
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import Lease, TrialStoreBase

logger = logging.getLogger(__name__)
#: accepted actions (INFO) and refused ones (WARNING): who asked for what
audit = logging.getLogger("coordinator.dashboard.audit")

HERE = Path(__file__).resolve().parent
#: seconds between the experiment page's polls (and the live regions' refreshes)
POLL_S = 2.0
_READ_ONLY = (
    "This dashboard is read-only. Restart it with --allow-actions to cancel experiments and "
    "requeue trials from the browser (or use `hyperfleet cancel`)."
)


class BadRequest(HyperfleetError):
    """A request no page can answer (a 400 page that says why)."""


class TooManyRequests(HyperfleetError):
    """A client over its rate limit (a 429 page)."""


class Dashboard:
    """The app's state: the store, the caches, the login, whether actions are allowed."""

    def __init__(
        self,
        store: TrialStoreBase,
        *,
        safe_uri: str,
        allow_actions: bool,
        login: Login | None = None,
        limiter: RateLimiter | None = None,
        **cache_options: Any,
    ) -> None:
        self.store = store
        self.safe_uri = safe_uri
        self.allow_actions = allow_actions
        self.login = login
        self.limiter = limiter
        #: the action token without a login (a library or test app): one per process
        self.token = secrets.token_urlsafe(24)
        self.caches = Caches(store, **cache_options)
        self.listing = ExperimentList(store)
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

    def action_token(self, who: Identity) -> str:
        return self.token if self.login is None else self.login.action_token(who)

    def can_act(self, request: Request) -> bool:
        return self.allow_actions and who_of(request).can_act

    def lookup(self, request: Request, key: str) -> dict[str, Any]:
        """The experiment of ``key`` (:func:`pages.experiment_doc`); a miss is charged to the
        requester's rate limit."""

        def charge() -> None:
            if self.limiter is not None:
                wait = self.limiter.take(client_key(request.scope, who_of(request)))
                if wait:
                    raise TooManyRequests(f"too many unknown keys; wait {wait:.0f} s")

        return pages.experiment_doc(self.store, self.listing, key, on_miss=charge)

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        html = self.env.get_template(name).render(
            request=request,
            safe_uri=self.safe_uri,
            db_name=getattr(self.store, "db_name", ""),
            allow_actions=self.can_act(request),
            token=self.action_token(who_of(request)) if self.can_act(request) else "",
            **context,
        )
        return HTMLResponse(html, status_code=status)


def who_of(request: Request) -> Identity:
    """The requester the guard identified (:data:`~coordinator.dashboard.login.OPEN` when the
    app runs without it, as in a bare test client)."""
    return request.scope.get("state", {}).get("who", OPEN)


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
        return 503, "The database is unavailable", pages.outage_text(str(error))
    if isinstance(error, BadRequest):
        return 400, "Bad request", str(error)
    if isinstance(error, TooManyRequests):
        return 429, "Too many requests", str(error)
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
            headers = {"Server-Timing": f"app;dur={ms:.1f}"}
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


def _echo(key: str) -> str:
    """An experiment key as an error may echo it (bounded: it comes from the address)."""
    return inspect.fmt_value(key, pages.ECHO_CHARS)


def _short(raw: str) -> str:
    return raw if len(raw) <= 40 else raw[:39] + "…"


def parse_tid(raw: str) -> int:
    """A trial id from an address or a form; anything but a 64-bit integer is a
    :class:`BadRequest` that says why (a 400 page: no such trial can exist)."""
    return parse_int(raw, "trial id", _TID_MIN, _TID_MAX)


def parse_int(raw: str, what: str, low: int, high: int) -> int:
    """An integer in ``[low, high]`` from an address or a form, else a :class:`BadRequest`."""
    if len(raw) > 40:  # int() of thousands of digits costs; no id is that long
        raise BadRequest(f"{what} {_short(raw)!r} is out of range ({low} to {high})")
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{what} {_short(raw)!r} is not a number") from None
    if not low <= value <= high:
        raise BadRequest(f"{what} {_short(raw)!r} is out of range ({low} to {high})")
    return value


def parse_float(raw: str, what: str, low: float, high: float) -> float:
    """A finite number in ``[low, high]``, else a :class:`BadRequest` (NaN and infinities too:
    they would reach date arithmetic as a 500)."""
    try:
        value = float(raw) if len(raw) <= 40 else math.nan
    except ValueError:
        raise BadRequest(f"{what} {_short(raw)!r} is not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise BadRequest(f"{what} {_short(raw)!r} must be a number from {low:g} to {high:g}")
    return value


def _tid(request: Request) -> int:
    return parse_tid(request.query_params.get("tid", ""))


@page
def experiments_page(dash: Dashboard, request: Request) -> Response:
    rows = pages.experiments(dash.store, dash.caches, dash.listing)
    return dash.render(request, "experiments.html", experiments=rows, title="Experiments")


@page
def experiment_page(dash: Dashboard, request: Request) -> Response:
    key = _exp_key(request)
    exp = dash.lookup(request, key)
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
        raise ConfigError(f"no trial with tid {tid} in experiment {_echo(key)!r}")
    t = pages.trial(doc, key)
    # the trial's number within its experiment (as status, top, show and best print it)
    t["number"] = rules.trial_number(
        doc.get("tid"), (e.tid for e in dash.caches.get(key).entries())
    )
    notice = {
        "requeued": "Trial requeued: it is queued again; its worker drops it at its next write.",
    }.get(request.query_params.get("done", ""))
    title = f"tid {tid} (trial {t['number']}) of {key}"
    return dash.render(request, "trial.html", t=t, notice=notice, title=title)


@page
def workers_page(dash: Dashboard, request: Request) -> Response:
    raw = request.query_params.get("hours")
    hours = pages.TIMELINE_HOURS if raw is None else parse_float(raw, "hours", 0.05, 24 * 14)
    key = request.query_params.get("key") or None  # the timeline of one experiment
    show_all = request.query_params.get("all") == "1"  # the workers long stopped or silent too
    data = pages.workers_page(
        dash.store, dash.caches, dash.listing, hours=hours, exp_key=key, show_all=show_all
    )
    return dash.render(request, "workers.html", w=data, title="Workers")


@page
def model_download(dash: Dashboard, request: Request) -> Response:
    key, tid = _exp_key(request), _tid(request)
    doc = dash.store.get_trial(key, tid)
    if doc is None:
        raise ConfigError(f"no trial with tid {tid} in experiment {_echo(key)!r}")
    data = dash.store.get_attachment(doc, defaults.MODEL_ATTACHMENT)
    if data is None:
        raise ConfigError(f"tid {tid} of {_echo(key)!r} has no saved model")
    safe_key = "".join(c if c.isalnum() or c in "-_" else "_" for c in key)[:80]
    name = f"{safe_key}-trial{tid}.keras"
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@api
def trials_api(dash: Dashboard, request: Request) -> dict[str, Any]:
    key = _exp_key(request)
    since = parse_int(request.query_params.get("since", "0"), "since", 0, _TID_MAX)
    exp = dash.lookup(request, key)
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
    # the guard has read at most MAX_BODY_BYTES already
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}


def requester(request: Request) -> str:
    return describe(request.scope, who_of(request))


def _refuse(
    dash: Dashboard, request: Request, what: str, title: str, message: str, why: str
) -> Response:
    audit.warning("dashboard: REFUSED %s by %s: %s", what, requester(request), why)
    return dash.render(request, "error.html", 403, title=title, message=message)


def action(
    handler: Callable[[Dashboard, Request, dict[str, str]], str],
) -> Callable[[Dashboard], Callable[[Request], Any]]:
    """A POST action: refused (403) when read-only, for a public viewer, from another origin,
    or without the session's token (a bearer request needs none); its handler returns where to
    go next (303). Each outcome is logged (``audit``) with who asked and what."""

    def bind(dash: Dashboard) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            name = request.url.path.rsplit("/", 1)[-1]
            if not dash.allow_actions:
                return _refuse(dash, request, name, "Read-only", _READ_ONLY, "read-only")
            who = who_of(request)
            if not who.can_act:
                message = "Log in (the URL `hyperfleet dashboard` printed) to act."
                return _refuse(dash, request, name, "Refused", message, "not logged in")
            form = await _form(request)
            what = f"{name} key={inspect.fmt_value(form.get('key'), 80)!r}" + (
                f" tid={inspect.fmt_value(form.get('tid'), 40)}" if "tid" in form else ""
            )
            token_ok = who.how == "bearer" or secrets.compare_digest(
                form.get("token", ""), dash.action_token(who)
            )
            if not token_ok or not _same_origin(request):
                return _refuse(
                    dash,
                    request,
                    what,
                    "Refused",
                    "This action did not come from this dashboard's own page (missing token "
                    "or another origin). Reload the page and try again.",
                    "bad token" if not token_ok else "another origin",
                )

            def run() -> Response:
                response = _guarded(
                    dash,
                    request,
                    lambda: RedirectResponse(handler(dash, request, form), status_code=303),
                )
                outcome = (
                    "done" if response.status_code == 303 else f"failed ({response.status_code})"
                )
                audit.info("dashboard: %s by %s: %s", what, requester(request), outcome)
                return response

            return await run_in_threadpool(run)

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
        raise ConfigError(f"no experiment {_echo(key)!r} in database {dash.store.db_name!r}")
    n = dash.store.cancel_experiment(key)
    logger.info("dashboard: cancelled %s (%d queued trials)", inspect.fmt_value(key, 80), n)
    dash.caches.get(key, refresh=False).refresh(force=True)
    return f"/exp?key={urllib.parse.quote(key, safe='')}&done=cancelled"


@action
def requeue_action(dash: Dashboard, request: Request, form: dict[str, str]) -> str:
    key = _form_key(form)
    tid = parse_tid(form.get("tid", ""))
    doc = dash.store.get_trial(key, tid)
    if doc is None:
        raise ConfigError(f"no trial with tid {tid} in experiment {_echo(key)!r}")
    if doc.get("state") != TrialState.RUNNING or not doc.get("owner"):
        raise ConfigError(
            f"tid {tid} is {inspect.state_name(doc.get('state'))}: only a running trial can be "
            "requeued (finished trials never change)"
        )
    new = dash.store.release(
        Lease.from_doc(doc), AttemptOutcome.REQUEUED, "requeued from the dashboard"
    )
    if new is None:
        raise ConfigError(f"tid {tid} changed while it was being requeued; look again")
    logger.info("dashboard: requeued tid %s of %s", tid, inspect.fmt_value(key, 80))
    return f"/trial?key={urllib.parse.quote(key, safe='')}&tid={tid}&done=requeued"


# -- the app --------------------------------------------------------------------------------------


def create_app(
    store: TrialStoreBase,
    *,
    safe_uri: str,
    allow_actions: bool = False,
    hosts: HostPolicy | None = None,
    login: Login | None = None,
    public_read: bool = False,
    limiter: RateLimiter | None = None,
    **cache_options: Any,
) -> Starlette:
    """The dashboard over ``store`` (see the module docstring for what keeps it safe).

    ``login`` ``None`` makes an app without a secret (a library or test app: anyone who can
    connect may look, and act with ``allow_actions``); ``hyperfleet dashboard`` always passes
    one (:func:`coordinator.dashboard.serve.build_app`). ``hosts`` ``None``: no Host check.
    ``limiter`` ``None``: a :class:`RateLimiter` with its defaults."""
    limiter = limiter or RateLimiter()
    dash = Dashboard(
        store,
        safe_uri=safe_uri,
        allow_actions=allow_actions,
        login=login,
        limiter=limiter,
        **cache_options,
    )
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
    middleware = [
        Middleware(Guard, hosts=hosts, login=login, public_read=public_read, limiter=limiter),
        Middleware(GZipMiddleware, minimum_size=2000),
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.dashboard = dash
    return app
