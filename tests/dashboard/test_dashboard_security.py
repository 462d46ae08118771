"""Issue 24: the dashboard on a shared login node, where anyone on the machine can connect to
127.0.0.1. In-process (Starlette's TestClient, and the raw ASGI app where the test must see how
much of a body was read), against the real embedded server. Item numbers are the issue's."""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest

from coordinator.dashboard import guard
from coordinator.dashboard.app import create_app
from coordinator.dashboard.guard import RateLimiter
from coordinator.dashboard.login import Login, load_or_create_secret
from coordinator.dashboard.serve import build_app
from coordinator.errors import ConfigError
from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore
from tests.conftest import stop_all
from tests.dashboard.conftest import EXP, make_experiment, start, trial_doc

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

SECRET = "s" * 43
HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options")


def served(store: TrialStore, host: str = "127.0.0.1", **options: Any) -> TestClient:
    """The app exactly as ``hyperfleet dashboard --host HOST`` builds it (port 8080)."""
    app = build_app(store, safe_uri="mongodb://x/", host=host, port=8080, secret=SECRET, **options)
    app.state.dashboard.caches.options["min_interval_s"] = 0.0
    return TestClient(
        app,
        base_url="http://127.0.0.1:8080",
        raise_server_exceptions=False,
        follow_redirects=False,
    )


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRET}"}


def logged_in(c: TestClient) -> TestClient:
    r = c.get(f"/?token={SECRET}")
    assert r.status_code == 303 and r.headers["location"] == "/"
    return c


# -- item 1: the Host check on every bind --------------------------------------------------------


@pytest.mark.parametrize("bind", ["127.0.0.1", "::1", "[::1]", "localhost", "0.0.0.0", "::"])
def test_a_rebinding_host_is_refused_on_every_bind(dash_store: TrialStore, bind: str) -> None:
    """``--host ::1`` passed no Host check at all: ``Host: evil.example`` got 200 and the
    action token."""
    make_experiment(dash_store, [trial_doc(0, TrialState.DONE)])
    c = served(dash_store, bind, allow_actions=True)
    for evil in ("evil.example", "evil.example:8080", "localhost.evil.example", "[::1"):
        r = c.get("/", headers={"Host": evil, **bearer()})
        assert r.status_code == 400, (bind, evil)
        assert "token" not in r.text and EXP not in r.text
    for good in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080"):
        r = c.get("/", headers={"Host": good, **bearer()})
        assert r.status_code == 200 and EXP in r.text, (bind, good)


def test_beyond_loopback_answers_addresses_and_named_hosts_only() -> None:
    policy = guard.host_policy("0.0.0.0", ["proxy.example"])
    assert policy.allows("10.1.2.3:8080") and policy.allows("[fe80::1]:8080")
    assert policy.allows("proxy.example") and not policy.allows("evil.example")
    assert not guard.host_policy("::1").allows("10.1.2.3")


def test_ipv6_beyond_loopback_warns(caplog: pytest.LogCaptureFixture) -> None:
    from coordinator.dashboard.serve import warn_beyond_loopback

    for host in ("::", "[::]", "2001:db8::1", "0.0.0.0", "node1.cluster"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            warn_beyond_loopback(host, 8080, allow_actions=False, public_read=False)
        assert "beyond this machine" in caplog.text, host
    for host in ("::1", "[::1]", "127.0.0.1", "localhost"):
        caplog.clear()
        warn_beyond_loopback(host, 8080, allow_actions=False, public_read=False)
        assert caplog.text == "", host


# -- item 2: bounded bodies and query strings, before any work -----------------------------------


def _post(app: Any, headers: list[tuple[bytes, bytes]], chunks: int, size: int) -> tuple[int, int]:
    """POST /actions/cancel to the raw ASGI app with a body of ``chunks`` x ``size`` bytes;
    returns the status and how many chunks the app pulled."""
    pulled = 0
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled >= chunks:
            await asyncio.sleep(3600)  # the client has nothing more to send
        pulled += 1
        return {"type": "http.request", "body": b"k" * size, "more_body": pulled < chunks}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/actions/cancel",
        "raw_path": b"/actions/cancel",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8080"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    return status[0], pulled


def test_a_huge_body_is_refused_before_it_is_read(dash_store: TrialStore) -> None:
    """With --allow-actions the whole POST body was read into memory before the token was
    checked (one 300 MB body: 749 MB of RSS). Now a declared length over the bound is refused
    before a byte is read, and an undeclared (chunked) body once the bound is passed."""
    make_experiment(dash_store, [trial_doc(0, TrialState.NEW)])
    app = create_app(dash_store, safe_uri="mongodb://x/", allow_actions=True)
    status, pulled = _post(app, [(b"content-length", b"300000000")], chunks=100, size=65536)
    assert status == 413 and pulled == 0
    status, pulled = _post(app, [(b"transfer-encoding", b"chunked")], chunks=100, size=65536)
    assert status == 413 and pulled == 1
    # a form of normal size still gets as far as the token check
    status, _ = _post(app, [(b"content-length", b"20")], chunks=1, size=20)
    assert status == 403
    assert not dash_store.cancel_requested(EXP)


def test_long_addresses_are_refused_and_keys_echoed_bounded(dash_store: TrialStore) -> None:
    """The unknown-key 404 echoed a key of any length (100 KB key, 101 KB page)."""
    make_experiment(dash_store, [trial_doc(0, TrialState.DONE)])
    c = logged_in(served(dash_store))
    huge = c.get("/exp", params={"key": "k" * 60_000})  # httpx allows 64 KB
    assert huge.status_code == 414 and len(huge.content) < 1000
    long_key = "k" * 3000
    for path in ("/exp", "/api/trials"):
        r = c.get(path, params={"key": long_key})
        assert r.status_code == 404, path
        assert long_key not in r.text and len(r.content) < 8000, (path, len(r.content))
        assert "k" * 60 in r.text  # the start of it is named


# -- item 4: NaN, infinities and huge numbers are a 400 ------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("/workers?hours=", "nan"),
        ("/workers?hours=", "inf"),
        ("/workers?hours=", "-inf"),
        ("/workers?hours=", "1e308"),
        ("/workers?hours=", "x"),
        ("/api/trials?key=exp-dash&since=", "nan"),
        ("/api/trials?key=exp-dash&since=", "1" * 1000),
        ("/trial?key=exp-dash&tid=", "1e999"),
        ("/trial?key=exp-dash&tid=", "9" * 30),
    ],
)
def test_bad_numbers_are_a_400_without_a_traceback(
    dash_store: TrialStore, caplog: pytest.LogCaptureFixture, path: str, value: str
) -> None:
    """``/workers?hours=nan`` was a 500 with a 15-line traceback in the log, every time."""
    make_experiment(dash_store, [trial_doc(0, TrialState.DONE)])
    c = TestClient(
        create_app(dash_store, safe_uri="mongodb://x/", min_interval_s=0.0),
        raise_server_exceptions=False,
    )
    with caplog.at_level(logging.INFO):
        r = c.get(path + value)
    assert r.status_code == 400, (path, value, r.status_code)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert c.get("/workers?hours=0.5").status_code == 200


# -- item 5: the experiment list is cached; rate limit per client --------------------------------


def test_unknown_keys_and_the_list_do_not_scan_the_trials_per_request(
    dash_store: TrialStore,
) -> None:
    """Every unknown-key request and every load of / ran distinct(exp_key) over all trials."""
    make_experiment(dash_store, [trial_doc(t, TrialState.DONE) for t in range(5)])
    scans = 0
    real = dash_store.trial_exp_keys

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal scans
        scans += 1
        return real(*args, **kwargs)

    dash_store.trial_exp_keys = counted  # type: ignore[method-assign]
    app = create_app(
        dash_store,
        safe_uri="mongodb://x/",
        min_interval_s=0.0,
        limiter=RateLimiter(per_s=1000, burst=1000),
    )
    c = TestClient(app, raise_server_exceptions=False)
    for i in range(40):
        assert c.get("/exp", params={"key": f"nope-{i}"}).status_code == 404
        assert c.get("/api/trials", params={"key": f"nope-{i}"}).status_code == 404
        assert c.get("/").status_code == 200
    assert c.get("/workers").status_code == 200
    assert scans == 1, scans


def test_expensive_paths_are_rate_limited_per_client(dash_store: TrialStore) -> None:
    make_experiment(dash_store, [trial_doc(0, TrialState.DONE)])
    clock = [0.0]
    limiter = RateLimiter(per_s=1.0, burst=5, clock=lambda: clock[0])
    app = create_app(
        dash_store,
        safe_uri="mongodb://x/",
        login=Login(SECRET, cookie_name="hyperfleet-dashboard-8080"),
        limiter=limiter,
    )
    a = logged_in(TestClient(app, raise_server_exceptions=False, follow_redirects=False))
    b = logged_in(TestClient(app, raise_server_exceptions=False, follow_redirects=False))
    statuses = [a.get("/").status_code for _ in range(8)]
    assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}
    r = a.get("/workers")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert all(h in r.headers for h in HEADERS)
    # unknown keys are charged too; known experiments' polls are not
    assert a.get("/exp", params={"key": "nope"}).status_code == 429
    assert a.get("/exp", params={"key": EXP}).status_code == 200
    assert a.get("/api/trials", params={"key": EXP}).status_code == 200
    assert b.get("/").status_code == 200  # another session has its own budget
    clock[0] += 2.0
    assert a.get("/").status_code == 200


# -- item 6: private by default, per-session action tokens, logged actions, headers ---------------


def test_nothing_is_shown_or_done_without_the_secret(dash_store: TrialStore) -> None:
    make_experiment(dash_store, [trial_doc(0, TrialState.NEW)])
    c = served(dash_store, allow_actions=True)
    for path in (
        "/",
        f"/exp?key={EXP}",
        f"/api/trials?key={EXP}",
        "/workers",
        "/trial?key=a&tid=0",
    ):
        for extra in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Cookie": "hyperfleet-dashboard-8080=1.2.3"},
        ):
            r = c.get(path, headers=extra)
            assert r.status_code == 401 and EXP not in r.text and 'token" value' not in r.text
    assert c.get(f"/exp?key={EXP}&token=wrong").status_code == 401
    r = c.post("/actions/cancel", data={"key": EXP, "token": "x"})
    assert r.status_code == 401 and not dash_store.cancel_requested(EXP)
    assert c.get("/static/dashboard.css").status_code == 200  # no data in static files


def test_the_login_url_sets_a_private_session_cookie(dash_store: TrialStore) -> None:
    make_experiment(dash_store, [trial_doc(0, TrialState.NEW)])
    c = served(dash_store)
    r = c.get(f"/exp?key={EXP}&token={SECRET}")
    assert r.status_code == 303 and r.headers["location"] == f"/exp?key={EXP}"  # token dropped
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("hyperfleet-dashboard-8080=") and SECRET not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=43200" in cookie
    assert c.get(f"/exp?key={EXP}").status_code == 200
    # a session ends: after its 12 hours the cookie no longer opens anything
    login = Login(SECRET, clock=lambda: 0.0)
    value = login.new_session()
    assert login.session_ok(value)
    later = Login(SECRET, clock=lambda: 12 * 3600.0 + 1)
    assert not later.session_ok(value)
    assert not Login("t" * 43).session_ok(value)  # another secret: nothing


def test_action_tokens_are_per_session_and_never_public(
    dash_store: TrialStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The action token was one value per process, the same for everyone, in every page."""
    make_experiment(dash_store, [trial_doc(0, TrialState.NEW)])
    a = logged_in(served(dash_store, allow_actions=True, public_read=True))
    b = logged_in(served(dash_store, allow_actions=True, public_read=True))
    b.app = a.app  # the same dashboard process, two browsers
    token_a = a.get(f"/exp?key={EXP}").text.split('name="token" value="')[1].split('"')[0]
    token_b = b.get(f"/exp?key={EXP}").text.split('name="token" value="')[1].split('"')[0]
    assert token_a != token_b
    public = TestClient(a.app, base_url="http://127.0.0.1:8080", raise_server_exceptions=False)
    page = public.get(f"/exp?key={EXP}")
    assert page.status_code == 200 and 'name="token"' not in page.text  # looks, cannot act
    same = {"Origin": "http://127.0.0.1:8080"}
    with caplog.at_level(logging.INFO, logger="coordinator.dashboard.audit"):
        assert (
            public.post("/actions/cancel", data={"key": EXP, "token": token_a}).status_code == 401
        )
        assert (
            b.post("/actions/cancel", data={"key": EXP, "token": token_a}, headers=same).status_code
            == 403
        )
        assert not dash_store.cancel_requested(EXP)
        ok = a.post("/actions/cancel", data={"key": EXP, "token": token_a}, headers=same)
        assert ok.status_code == 303 and dash_store.cancel_requested(EXP)
    lines = [r.getMessage() for r in caplog.records]
    refused = [m for m in lines if "REFUSED" in m]
    assert any("POST /actions/cancel" in m and "not logged in" in m for m in refused), lines
    assert any(
        "cancel key='exp-dash'" in m and "bad token" in m and "session " in m for m in refused
    )
    assert any("cancel key='exp-dash'" in m and m.endswith(": done") for m in lines), lines
    assert all("127.0.0.1" in m or "testclient" in m for m in refused)


def test_security_headers_on_every_response(dash_store: TrialStore) -> None:
    """404, 405, 400 answers and static files carried none."""
    make_experiment(dash_store, [trial_doc(0, TrialState.DONE)])
    c = served(dash_store)
    login = c.get(f"/?token={SECRET}")
    responses = {
        "login redirect": login,
        "page": c.get("/"),
        "static": c.get("/static/dashboard.css"),
        "404": c.get("/no-such-page"),
        "405": c.post("/"),
        "400 host": c.get("/", headers={"Host": "evil.example"}),
        "400 number": c.get("/workers?hours=nan"),
        "413": c.post("/actions/cancel", content=b"x" * 20_000),
        "414": c.get("/?" + "x" * 5000),
        "json": c.get(f"/api/trials?key={EXP}"),
        "404 json": c.get("/api/trials?key=nope"),
    }
    c.cookies.clear()
    responses["401"] = c.get("/")
    for name, r in responses.items():
        missing = [h for h in HEADERS if h not in r.headers]
        assert not missing, (name, r.status_code, missing)
        assert r.headers["x-frame-options"] == "DENY"
    assert responses["405"].status_code == 405 and responses["400 host"].status_code == 400
    assert responses["page"].headers["cache-control"] == "no-store"


def test_the_secret_file_is_private(tmp_path: Any) -> None:
    path = tmp_path / "cfg" / "hyperfleet" / "dashboard-token"
    secret = load_or_create_secret(path)
    assert len(secret) >= 43 and (path.stat().st_mode & 0o777) == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert load_or_create_secret(path) == secret  # reused: browsers stay logged in
    assert load_or_create_secret(path, rotate=True) != secret
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_secret(path)


# -- the real process ----------------------------------------------------------------------------


def _raw(url: str, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` to the dashboard at ``url`` over a plain socket; its first reply line."""
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as s:
        s.sendall(request)
        return s.recv(4096).split(b"\r\n", 1)[0]


def test_the_ipv6_loopback_process_refuses_a_rebinding_host(
    server: EmbeddedServer, db_name: str, tmp_path: Path
) -> None:
    """Item 1 through ``hyperfleet dashboard --host ::1``: Host evil.example got 200."""
    started = start(server.uri, db_name, "--host", "::1", log=tmp_path / "d.log")
    try:
        assert started.url.startswith("http://[::1]:")
        auth = f"Authorization: Bearer {started.token}\r\n".encode()
        evil = _raw(started.url, b"GET / HTTP/1.1\r\nHost: evil.example\r\n" + auth + b"\r\n")
        assert b" 400 " in evil, evil
        port = started.url.rsplit(":", 1)[1].strip("/")
        good = f"GET /static/dashboard.css HTTP/1.1\r\nHost: [::1]:{port}\r\n\r\n".encode()
        assert b" 200 " in _raw(started.url, good)
    finally:
        stop_all([started.proc])


def test_the_process_refuses_a_300_mb_body_without_waiting_for_it(
    server: EmbeddedServer, db_name: str, tmp_path: Path
) -> None:
    """Item 2 through the real server: the declared length alone is refused at once (the old
    dashboard waited to read all 300 MB, then held them in memory)."""
    started = start(server.uri, db_name, "--allow-actions", log=tmp_path / "d.log")
    try:
        head = (
            "POST /actions/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {started.token}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            "Content-Length: 300000000\r\n\r\nkey=x&token="
        )
        assert b" 413 " in _raw(started.url, head.encode(), timeout=10)
    finally:
        stop_all([started.proc])


_OTHER_USER_SCRIPT = r"""
import json, sys, urllib.error, urllib.request
url, key, token_file, pid = sys.argv[1:5]
out = {}
try:
    open(token_file).read()
    out["token_file"] = "read"
except OSError as e:
    out["token_file"] = type(e).__name__
try:
    out["cmdline"] = open(f"/proc/{pid}/cmdline").read()
except OSError as e:
    out["cmdline"] = type(e).__name__
try:
    open(f"/proc/{pid}/environ").read()
    out["environ"] = "read"
except OSError as e:
    out["environ"] = type(e).__name__

def call(path, data=None, headers={}):
    req = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

out["pages"] = {p: call(p) for p in ("", f"exp?key={key}", f"api/trials?key={key}", "workers")}
out["bearer"] = call("", headers={"Authorization": "Bearer guess"})
form = f"key={key}&token=guess".encode()
out["cancel"] = call("actions/cancel", data=form,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
print(json.dumps(out))
"""


def test_a_second_local_user_can_neither_read_nor_act(
    server: EmbeddedServer, db_name: str, dash_store: TrialStore, tmp_path: Path
) -> None:
    """The issue's "done when": another OS user of this machine, created here, gets nothing
    from a dashboard without its secret: not the token file, not the process's command line or
    environment, no page, no action; the refused action is logged with that user's name."""
    import json
    import os
    import shutil
    import subprocess
    import tempfile
    import uuid

    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("needs root with useradd and runuser to create a second local user")
    name = f"hfo{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    shared = Path(tempfile.mkdtemp(prefix="hf-shared-"))
    shared.chmod(0o755)  # others may look into the folder; the secret inside is 0600
    make_experiment(dash_store, [trial_doc(0, TrialState.NEW)])
    log = tmp_path / "dashboard.log"
    started = start(
        server.uri, db_name, "--allow-actions", log=log, token_file=shared / "dashboard-token"
    )
    try:
        python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else None
        if python is None:
            pytest.skip("no system python for the second user")
        done = subprocess.run(
            ["runuser", "-u", name, "--", python, "-c", _OTHER_USER_SCRIPT, started.url, EXP]
            + [str(shared / "dashboard-token"), str(started.proc.pid)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        # the dashboard works for its owner
        assert started.get(f"exp?key={EXP}")[0] == 200
    finally:
        stop_all([started.proc])
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(shared, ignore_errors=True)
    assert seen["token_file"] == "PermissionError"
    assert started.token not in seen["cmdline"]
    assert seen["environ"] == "PermissionError"
    for path, (status, body) in seen["pages"].items():
        assert status == 401 and EXP not in body and started.token not in body, path
    assert seen["bearer"][0] == 401 and seen["cancel"][0] == 401
    assert not dash_store.cancel_requested(EXP)
    text = log.read_text()
    assert "REFUSED POST /actions/cancel" in text and f"(local user {name})" in text, text
