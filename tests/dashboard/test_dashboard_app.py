"""The dashboard's app against the real embedded server, in-process (Starlette's TestClient):
pages, the incremental poll, escaping, actions and their guards, database trouble, the CLI."""

from __future__ import annotations

import configparser
import datetime as dt
import json
import re
import socket
import warnings
from pathlib import Path

from coordinator import defaults
from coordinator.dashboard import cache as cache_mod
from coordinator.dashboard.app import create_app
from coordinator.server import EmbeddedServer
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import TrialStore, connect
from tests.conftest import ROOT, hyperfleet, stop_all, wait_for
from tests.dashboard.conftest import EXP, Started, make_experiment, start, trial_doc

with warnings.catch_warnings():
    # Starlette 1.x suggests httpx2 for its TestClient; httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

SCRIPT = "<script>window.__pwned=1</script>"


def client(store: TrialStore, **options) -> TestClient:
    app = create_app(store, safe_uri="mongodb://127.0.0.1/", min_interval_s=0.0, **options)
    return TestClient(app, raise_server_exceptions=False, follow_redirects=False)


def token_of(html: str) -> str:
    match = re.search(r'name="token" value="([^"]+)"', html)
    assert match, "no action form on the page"
    return match.group(1)


def mixed(n: int = 6) -> list[dict]:
    states = [TrialState.DONE, TrialState.DONE, TrialState.ERROR, TrialState.RUNNING]
    docs = [trial_doc(tid, states[tid % len(states)]) for tid in range(n)]
    docs[3]["owner"] = "host-a:1:w"
    return docs + [trial_doc(n, TrialState.NEW)]


def test_every_page_renders(dash_store: TrialStore) -> None:
    make_experiment(dash_store, mixed())
    c = client(dash_store)
    home = c.get("/")
    assert home.status_code == 200 and EXP in home.text
    assert "best loss" in home.text and "0" in home.text
    exp = c.get("/exp", params={"key": EXP})
    assert exp.status_code == 200 and 'id="boot"' in exp.text
    assert exp.headers["content-security-policy"].startswith("default-src 'self'")
    trial = c.get("/trial", params={"key": EXP, "tid": 2})
    assert trial.status_code == 200 and "bad x" in trial.text and "Traceback" in trial.text
    assert c.get("/workers").status_code == 200
    assert c.get("/exp", params={"key": "nope"}).status_code == 404
    # issue 24, item 4: a trial id that is no number is a bad request (it was a 404)
    assert c.get("/trial", params={"key": EXP, "tid": "x"}).status_code == 400
    # read-only: no action forms
    assert 'action="/actions/' not in exp.text + trial.text


def test_poll_sends_only_what_changed(dash_store: TrialStore) -> None:
    make_experiment(dash_store, [trial_doc(t, TrialState.NEW) for t in range(5)])
    c = client(dash_store)
    first = c.get("/api/trials", params={"key": EXP, "since": 0}).json()
    assert first["full"] and len(first["trials"]) == 5
    assert first["summary"]["counts"]["new"] == 5
    same = c.get("/api/trials", params={"key": EXP, "since": first["seq"], "cache": first["cache"]})
    assert same.json()["trials"] == [] and not same.json()["full"]
    assert "app;dur=" in same.headers["server-timing"]

    lease = dash_store.reserve_trial("w1", exp_key=EXP)
    assert lease is not None
    dash_store.record_epoch(lease, {"epoch": 1, "loss": 0.5})
    dash_store.finish(lease, {"status": "ok", "loss": 0.25}, {})
    after = c.get(
        "/api/trials", params={"key": EXP, "since": first["seq"], "cache": first["cache"]}
    ).json()
    assert [t["tid"] for t in after["trials"]] == [lease.tid]
    changed = after["trials"][0]
    assert changed["state"] == "done" and changed["ok"] == 0.25
    assert changed["curve"] == {"epoch": [1.0], "loss": [0.5]}
    assert after["summary"]["best_tid"] == lease.tid and after["summary"]["finished"] == 1
    # a page from before a restart (another cache token) gets everything again
    stale = c.get("/api/trials", params={"key": EXP, "since": after["seq"], "cache": "old"}).json()
    assert stale["full"] and len(stale["trials"]) == 5


def test_cache_overlap_rereads_are_not_changes(dash_store: TrialStore) -> None:
    make_experiment(dash_store, [trial_doc(t, TrialState.NEW) for t in range(3)])
    cache = cache_mod.TrialCache(dash_store, EXP, min_interval_s=0.0, overlap_s=60.0)
    cache.refresh()
    assert cache.seq == 3
    cache.refresh()  # the 60 s overlap reads all three again: same _id and mtime, no change
    assert cache.last_changes == 3 and cache.seq == 3
    lease = dash_store.reserve_trial("w1", exp_key=EXP)
    assert lease is not None
    cache.refresh()
    assert cache.seq == 4 and [e.tid for e in cache.changed_since(3)] == [lease.tid]


def test_decimate_keeps_ends_and_bounds() -> None:
    assert cache_mod.decimate(5) == [0, 1, 2, 3, 4]
    kept = cache_mod.decimate(5000)
    assert len(kept) <= cache_mod.MAX_CURVE_POINTS and kept[0] == 0 and kept[-1] == 4999
    long = cache_mod.curve([{"epoch": i + 1, "loss": 1.0, "note": "x"} for i in range(1000)])
    assert long is not None and set(long) == {"epoch", "loss"}
    assert len(long["epoch"]) <= cache_mod.MAX_CURVE_POINTS and long["epoch"][-1] == 1000


def test_strings_from_the_database_are_escaped(dash_store: TrialStore) -> None:
    key = "</script><script>window.__pwned=3</script>"
    evil = trial_doc(
        0,
        TrialState.ERROR,
        exp_key=key,
        params={"x": 0.5, "name": SCRIPT},
        error={"type": SCRIPT, "message": SCRIPT, "traceback": f"</pre>{SCRIPT}"},
    )
    make_experiment(dash_store, [evil], exp_key=key, space=SCRIPT, algo=SCRIPT)
    c = client(dash_store)
    pages = [
        c.get("/"),
        c.get("/exp", params={"key": key}),
        c.get("/trial", params={"key": key, "tid": 0}),
        c.get("/workers"),
    ]
    for page in pages:
        assert page.status_code == 200
        assert "<script>window.__pwned" not in page.text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in pages[2].text
    boot = re.search(r'<script type="application/json" id="boot">(.*?)</script>', pages[1].text)
    assert boot and json.loads(boot.group(1))["key"] == key  # escaped inside, same value
    # the poll is JSON (the page puts it on screen with textContent)
    api = c.get("/api/trials", params={"key": key, "since": 0})
    assert api.headers["content-type"].startswith("application/json")
    assert api.json()["trials"][0]["row"]["params.name"] == SCRIPT


def test_actions_are_refused_when_read_only(dash_store: TrialStore) -> None:
    make_experiment(dash_store, [trial_doc(0, TrialState.NEW)])
    c = client(dash_store)
    r = c.post("/actions/cancel", data={"key": EXP, "token": "guess"})
    assert r.status_code == 403 and "--allow-actions" in r.text
    assert not dash_store.cancel_requested(EXP)


def test_cancel_needs_the_token_and_the_same_origin(dash_store: TrialStore) -> None:
    make_experiment(dash_store, [trial_doc(0, TrialState.NEW), trial_doc(1, TrialState.NEW)])
    c = client(dash_store, allow_actions=True)
    page = c.get("/exp", params={"key": EXP})
    token = token_of(page.text)
    assert c.post("/actions/cancel", data={"key": EXP, "token": "wrong"}).status_code == 403
    foreign = c.post(
        "/actions/cancel",
        data={"key": EXP, "token": token},
        headers={"Origin": "http://evil.example"},
    )
    assert foreign.status_code == 403 and not dash_store.cancel_requested(EXP)
    ok = c.post(
        "/actions/cancel",
        data={"key": EXP, "token": token},
        headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    )
    assert ok.status_code == 303 and ok.headers["location"].endswith("done=cancelled")
    assert dash_store.cancel_requested(EXP)
    assert dash_store.count(EXP, [TrialState.CANCEL]) == 2
    assert "Cancel requested" in c.get(ok.headers["location"]).text


def test_requeue_only_a_running_trial(dash_store: TrialStore) -> None:
    make_experiment(dash_store, [trial_doc(0, TrialState.NEW), trial_doc(1, TrialState.DONE)])
    lease = dash_store.reserve_trial("w1", exp_key=EXP)
    assert lease is not None and lease.tid == 0
    c = client(dash_store, allow_actions=True)
    token = token_of(c.get("/trial", params={"key": EXP, "tid": 0}).text)
    done = c.post("/actions/requeue", data={"key": EXP, "tid": "1", "token": token})
    assert done.status_code == 404 and "only a running trial" in done.text
    r = c.post("/actions/requeue", data={"key": EXP, "tid": "0", "token": token})
    assert r.status_code == 303
    doc = dash_store.get_trial(EXP, 0)
    assert doc is not None and doc["state"] == TrialState.NEW and doc["owner"] is None
    assert doc["attempt_history"][-1]["outcome"] == AttemptOutcome.REQUEUED.value
    assert not dash_store.heartbeat(lease, 5.0)  # the worker has lost it


def test_model_download(dash_store: TrialStore) -> None:
    make_experiment(dash_store, [trial_doc(0, TrialState.NEW), trial_doc(1, TrialState.NEW)])
    lease = dash_store.reserve_trial("w1", exp_key=EXP)
    assert lease is not None
    assert dash_store.attach(lease, defaults.MODEL_ATTACHMENT, b"keras-bytes")
    dash_store.finish(lease, {"status": "ok", "loss": 1.0}, {})
    c = client(dash_store)
    other = 1 - lease.tid
    assert "download the saved model" in c.get("/trial", params={"key": EXP, "tid": lease.tid}).text
    r = c.get("/model", params={"key": EXP, "tid": lease.tid})
    assert r.status_code == 200 and r.content == b"keras-bytes"
    assert "attachment" in r.headers["content-disposition"]
    assert c.get("/model", params={"key": EXP, "tid": other}).status_code == 404


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_down_is_a_503_page_without_the_password() -> None:
    uri = f"mongodb://alice:s3cret-pw@127.0.0.1:{_closed_port()}/"
    store = connect(uri, "nothing", timeout_s=0.5, outage_s=0.0, check=False)
    app = create_app(store, safe_uri=store.safe_uri)
    c = TestClient(app, raise_server_exceptions=False)
    for path in ("/", "/exp?key=a", "/workers", "/trial?key=a&tid=1"):
        r = c.get(path)
        assert r.status_code == 503, path
        assert "database is unavailable" in r.text and "Traceback" not in r.text
        assert "s3cret-pw" not in r.text and "alice:***@" in r.text
    api = c.get("/api/trials", params={"key": "a"})
    assert api.status_code == 503 and "s3cret-pw" not in api.text and api.json()["error"]
    store.close()


def test_static_files_are_package_data() -> None:
    """Every template and static file is listed in setup.cfg's package_data (else a wheel
    would ship a dashboard without its pages or its chart library)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    globs = cfg["options.package_data"]["coordinator.dashboard"].split()
    base = ROOT / "coordinator" / "dashboard"
    covered = {p for g in globs for p in base.glob(g)}
    files = {p for d in ("templates", "static") for p in (base / d).rglob("*") if p.is_file()}
    assert files and files <= covered, sorted(str(p) for p in files - covered)
    assert (base / "static/vendor/uplot/LICENSE").read_text().startswith("The MIT License")


def get_until_ok(started: Started, path: str, timeout: float = 30.0) -> str:
    """The body of ``path`` (logged in with the bearer secret) once it answers 200. A fresh
    dashboard's first page is a 503 when the database does not answer within its 3 s (a loaded
    machine): retried; any other error is not."""

    def attempt() -> str | None:
        status, body = started.get(path)
        if status == 503:
            return None
        assert status == 200, (status, body[:300])
        return body

    return wait_for(attempt, timeout, interval=0.5, what=f"a 200 from {path}")


def test_cli_prints_url_serves_and_warns_beyond_loopback(
    server: EmbeddedServer, db_name: str, tmp_path: Path
) -> None:
    store = connect(server.uri, db_name)
    make_experiment(store, [trial_doc(0, TrialState.DONE)])
    log = tmp_path / "dashboard.log"
    started = start(server.uri, db_name, "--host", "0.0.0.0", log=log)
    try:
        # a wildcard bind prints a loopback address to open (issue 24)
        assert started.url.startswith("http://127.0.0.1:")
        assert EXP in get_until_ok(started, f"exp?key={EXP}")
    finally:
        stop_all([started.proc])
        store.drop_database()
        store.close()
    assert "beyond this machine" in log.read_text()


def test_cli_redacts_the_password(server: EmbeddedServer, tmp_path: Path) -> None:
    uri = server.uri.replace("mongodb://", "mongodb://bob:hunter2-pw@")
    log = tmp_path / "dashboard.log"
    started = start(uri, "nothing", log=log)
    try:
        _status, body = started.get("")  # credentials refused: the 503 page
    finally:
        stop_all([started.proc])
    assert "hunter2-pw" not in body and "bob:***@" in body
    assert "hunter2-pw" not in log.read_text()


def test_summary_uses_the_rules_best_trial(dash_store: TrialStore) -> None:
    """Ties on loss go to the lowest tid (coordinator.rules.best_trial), NaN never wins."""
    docs = [trial_doc(t, TrialState.DONE) for t in range(3)]
    docs[0]["result"] = {"status": "ok", "loss": float("nan")}
    docs[1]["result"] = {"status": "ok", "loss": 0.5}
    docs[2]["result"] = {"status": "ok", "loss": 0.5}
    make_experiment(dash_store, docs)
    body = client(dash_store).get("/api/trials", params={"key": EXP, "since": 0}).json()
    assert body["summary"]["best_tid"] == 1 and body["summary"]["best_loss"] == 0.5
    assert {t["tid"]: t["ok"] for t in body["trials"]} == {0: None, 1: 0.5, 2: 0.5}


def test_timestamp_is_utc() -> None:
    naive = dt.datetime(2026, 1, 1, 0, 0, 0)
    assert cache_mod.timestamp(naive) == 1767225600.0
    assert cache_mod.timestamp("x") is None


def test_pruned_trials_have_their_own_state_and_never_win(dash_store: TrialStore) -> None:
    docs = [trial_doc(t, TrialState.DONE) for t in range(3)]
    docs[0]["result"] = {"status": "ok", "loss": 0.01, "pruned": {"epoch": 2, "rule": "median"}}
    make_experiment(dash_store, docs, pruning={"rule": "median", "metric": "val_loss"})
    c = client(dash_store)
    body = c.get("/api/trials", params={"key": EXP, "since": 0}).json()
    assert {t["tid"]: t["state"] for t in body["trials"]} == {0: "pruned", 1: "done", 2: "done"}
    assert body["summary"]["counts"]["pruned"] == 1 and body["summary"]["counts"]["done"] == 2
    assert body["summary"]["best_tid"] == 1  # rules.best_trial: a pruned trial never is
    assert "median on val_loss (min)" in c.get("/").text


def test_trials_paused_at_a_rung_have_their_own_count(dash_store: TrialStore) -> None:
    """Issue 21: --promote pauses trials at a rung; the summary counts them apart from the
    pruned ones (the CLI's status says "(N paused at a rung)"), its charts draw them as pruned."""
    docs = [trial_doc(t, TrialState.DONE) for t in range(4)]
    paused = {"epoch": 1, "rule": "asha", "paused": True}
    docs[0]["result"] = {"status": "ok", "loss": 0.9, "pruned": paused}
    docs[1]["result"] = {"status": "ok", "loss": 0.8, "pruned": {**paused, "paused": False}}
    make_experiment(dash_store, docs, pruning={"rule": "asha", "metric": "val_loss"})
    body = client(dash_store).get("/api/trials", params={"key": EXP, "since": 0}).json()
    counts = body["summary"]["counts"]
    assert (counts["done"], counts["pruned"], counts["paused"]) == (2, 1, 1)
    assert {t["tid"]: t["state"] for t in body["trials"]}[0] == "pruned"
    page = client(dash_store).get("/").text
    assert 'data-state="paused"' in page and "paused at a rung 1" in page


def test_a_promoted_trials_page_shows_its_earlier_segments(dash_store: TrialStore) -> None:
    """A promoted trial's duration is its last segment's; the page also shows the earlier
    segments' seconds (``segments_duration_s``), and no such line for other trials or junk."""
    docs = [trial_doc(t, TrialState.DONE) for t in range(3)]
    docs[0].update(duration_s=4.0, segments_duration_s=12.5)
    docs[2].update(segments_duration_s="junk")
    make_experiment(dash_store, docs)
    c = client(dash_store)
    pages = [c.get("/trial", params={"key": EXP, "tid": tid}).text for tid in range(3)]
    assert "<b>earlier segments</b> 12 s" in pages[0], pages[0][:3000]
    assert "earlier segments" not in pages[1] and "earlier segments" not in pages[2]


def test_the_attempts_table_says_how_long_each_attempt_ran(dash_store: TrialStore) -> None:
    """A paused segment's ``duration_s``; a lost or handed-back attempt's ``ran_s`` (claim to
    last heartbeat: "at least"); a dash for neither, or junk."""
    doc = trial_doc(0, TrialState.DONE)
    doc["attempt_history"] = [
        {"attempt": 1, "owner": "w1", "outcome": "paused", "duration_s": 3.0},
        {"attempt": 2, "owner": "w2", "outcome": "lost", "ran_s": 42.0},
        {"attempt": 3, "owner": "w3", "outcome": "requeued", "ran_s": "junk"},
        *({"attempt": 4, "outcome": "lost", "ran_s": v} for v in (float("nan"), -5.0, 1e300)),
    ]
    make_experiment(dash_store, [doc])
    page = client(dash_store).get("/trial", params={"key": EXP, "tid": 0}).text
    cells = re.findall(r"<td>([^<]*)</td></tr>", page)
    assert cells[-6:] == ["3.0 s", "≥ 42 s", "—", "—", "—", "—"], cells


def test_view_trials_is_lean_and_incremental(dash_store: TrialStore) -> None:
    make_experiment(dash_store, [trial_doc(0, TrialState.ERROR), trial_doc(1, TrialState.NEW)])
    docs = {d["tid"]: d for d in dash_store.view_trials(EXP)}
    assert set(docs) == {0, 1}
    assert "spec" not in docs[0] and "traceback" not in docs[0]["error"]
    assert docs[0]["epochs"] and docs[0]["mtime"] is not None
    later = dash_store.server_time() + dt.timedelta(seconds=5)
    assert dash_store.view_trials(EXP, later) == []


def test_plain_fmin_experiments_are_listed(dash_store: TrialStore, server: EmbeddedServer) -> None:
    """Plain hyperopt fmin writes trials but no experiment document: the home page, the
    experiment page and ``hyperfleet status`` still show them (marked ``plain fmin``)."""
    make_experiment(dash_store, mixed())
    dash_store.insert_trials([trial_doc(t, TrialState.DONE, exp_key="plain-k") for t in (50, 51)])
    c = client(dash_store)
    home = c.get("/")
    assert home.status_code == 200 and EXP in home.text and "plain-k" in home.text
    assert "plain fmin" in home.text
    assert c.get("/exp", params={"key": "plain-k"}).status_code == 200
    out = hyperfleet("status", "--mongo", server.uri, "--db", dash_store.db_name)
    assert out.returncode == 0, out.stderr
    assert "experiment plain-k  [plain fmin]" in out.stdout and f"experiment {EXP}" in out.stdout
    assert "2 finished" in out.stdout.split("experiment plain-k")[1]


def test_best_so_far_line_and_malformed_follow_the_rules(dash_store: TrialStore) -> None:
    """The experiment page's "best loss so far" comes from coordinator.rules.best_so_far: it
    starts at the first *full* trial, never at a pruned trial's lower partial loss (the page
    used to take the running minimum of every successful loss); a malformed document is in no
    chart, counted apart as `status` counts it."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    docs = [trial_doc(t, TrialState.DONE) for t in range(4)]
    docs[0]["result"] = {"status": "ok", "loss": 0.01, "pruned": {"epoch": 2, "rule": "median"}}
    docs[3]["misc"]["tid"] = 99  # malformed: misc.tid is not its tid
    docs[3]["result"] = {"status": "ok", "loss": 0.001}
    for t, d in enumerate(docs):
        d["ended"] = now - dt.timedelta(seconds=10 - t)  # the pruned trial ends first
    make_experiment(dash_store, docs)
    body = client(dash_store).get("/api/trials", params={"key": EXP, "since": 0}).json()
    line = body["best_so_far"]
    # where the best improved (tid 1) and the last trial it counts (tid 2, the line's end)
    assert line["tid"] == [1, 2] and line["best"] == [1.0, 1.0] and len(line["t"]) == 2
    trials = {t["tid"]: t for t in body["trials"]}
    assert [tid for tid, t in sorted(trials.items()) if t["counted"]] == [1, 2]
    assert trials[3]["state"] == "malformed" and trials[3]["ok"] is None
    assert body["summary"]["counts"]["malformed"] == 1
    assert body["summary"]["best_tid"] == 1


# -- issue 23: what the charts read -----------------------------------------------------------


def _pruned_at_1(tid: int) -> int | None:
    return 1 if tid % 6 == 5 else None


def test_poll_gives_the_space_scales_the_epochs_flag_and_importance(dash_store: TrialStore) -> None:
    """The experiment page draws a log-distributed parameter on a log axis: the poll names the
    scale the space declares (mnist_mlp's learning rates are hp.loguniform, its dropouts
    hp.uniform), matched to the params columns; it says that trials reported epochs; trials
    pruned at epoch 1 are among the drawn curves; and the importance panel holds the numbers
    `hyperfleet importance` prints (the same function over the same full trials)."""
    from coordinator import importance, inspect
    from tests.dashboard.chart_data import decaying, lr_loss, space_trials

    docs = space_trials("mnist_mlp", 24, EXP, loss=lr_loss, epochs=decaying(3), pruned=_pruned_at_1)
    make_experiment(dash_store, docs, space="mnist_mlp", settings={})
    body = client(dash_store).get("/api/trials", params={"key": EXP, "since": 0}).json()
    scales = body["param_scales"]
    assert scales["params.optimizer.learning_rate"] == "log"
    assert scales["params.layers.0.dropout"] == "linear"
    assert body["epochs_reported"] is True
    pruned = [t["tid"] for t in body["trials"] if t["state"] == "pruned"]
    assert pruned == [5, 11, 17, 23]
    assert set(pruned) <= set(body["curve_tids"])  # the 10 most recently pruned are drawn
    one_epoch = {t["tid"]: t["curve"] for t in body["trials"] if t["tid"] in pruned}
    assert all(len(c["epoch"]) == 1 for c in one_epoch.values())
    panel = body["importance"]
    assert panel["method"] == "ped-anova" and panel["trials"] == 20 and panel["pruned"] == 4
    exp = dash_store.get_experiment(EXP)
    cli = importance.importances(dash_store.view_trials(EXP), inspect.ParamDecoder(exp).space)
    assert [(r["label"], r["share"]) for r in panel["rows"]] == [
        (r.label, r.share) for r in cli.importances
    ]
    assert abs(sum(r["share"] for r in panel["rows"]) - 1.0) < 1e-6


def test_importance_panel_says_why_not(dash_store: TrialStore) -> None:
    """Too few full trials (or no Optuna): one line that says so, not an empty panel."""
    make_experiment(dash_store, [trial_doc(t, TrialState.DONE) for t in range(3)])
    body = client(dash_store).get("/api/trials", params={"key": EXP, "since": 0}).json()
    assert "at least 10 full successful trials" in body["importance"]["note"]


def test_a_space_without_epochs_says_so(dash_store: TrialStore) -> None:
    """No trial reported per-epoch metrics: the poll says so (the page then reads "this space
    reports no per-epoch metrics", not "no data yet" for ever). The built-in "quadratic" space
    declares x as hp.uniform: its column is linear (matched by the leaf name)."""
    make_experiment(dash_store, [trial_doc(t, TrialState.DONE, epochs=[]) for t in range(3)])
    body = client(dash_store).get("/api/trials", params={"key": EXP, "since": 0}).json()
    assert body["epochs_reported"] is False and body["curve_tids"] == []
    assert body["param_scales"] == {"params.x": "linear"}


def test_trial_page_of_a_pruned_trial_says_pruned_and_tenths(dash_store: TrialStore) -> None:
    """A pruned trial's page shows the "pruned" badge (was a green "done"), where and why it was
    stopped, and a 0.2 s duration as "0.2 s" (was "0 s")."""
    stopped = {"epoch": 1, "rule": "median", "metric": "val_loss", "value": 0.5, "threshold": 0.4}
    docs = [
        trial_doc(
            0,
            TrialState.DONE,
            duration_s=0.2,
            result={"status": "ok", "loss": 0.5, "pruned": stopped},
        ),
        trial_doc(1, TrialState.DONE, duration_s=0.2),
    ]
    make_experiment(dash_store, docs)
    c = client(dash_store)
    page = c.get("/trial", params={"key": EXP, "tid": 0}).text
    badge = page.split('id="state-badge"')[1].split("</span></span>")[0]
    assert 'data-state="pruned"' in badge and 'data-state="done"' not in badge
    assert "stopped after epoch 1 by median (val_loss 0.5, threshold 0.4)" in page
    assert "<b>duration</b> 0.2 s" in page
    full = c.get("/trial", params={"key": EXP, "tid": 1}).text
    assert 'data-state="done"' in full.split('id="state-badge"')[1][:200]
    assert "stopped after epoch" not in full


def test_pages_number_trials_within_their_experiment(dash_store: TrialStore) -> None:
    """Issue 23 (new-user review): the dashboard called tids "trial" ("Trial 64 of k2",
    "(trial 144)") while status and show number trials within their experiment. Pages now say
    tid and give the trial's number beside it."""
    docs = [
        trial_doc(t, TrialState.DONE, result={"status": "ok", "loss": 1.0 / (t - 39)})
        for t in (40, 41, 42)
    ]
    make_experiment(dash_store, docs)
    c = client(dash_store)
    page = c.get("/trial", params={"key": EXP, "tid": 42}).text
    assert "<title>tid 42 (trial 3) of" in page and "(trial 3)</span>" in page
    listing = c.get("/").text
    assert "(tid 42)" in listing  # the list stays within 1,280 px: the number is on the pages


def test_rates_durations_and_outage_text() -> None:
    from coordinator.dashboard import pages

    assert [pages.rate(v) for v in (2588.71, 99.7, 41.26, 2.345, 0.123, 0.004, 0, None)] == [
        "2589", "100", "41", "2.3", "0.12", "<0.01", "0", "—",
    ]  # fmt: skip
    assert [pages.age(v) for v in (0.2, 0.0, 9.94, 42.4, 300, None)] == [
        "0.2 s", "0.0 s", "9.9 s", "42 s", "5.0 min", "—",
    ]  # fmt: skip
    cli = (
        "MongoDB at mongodb://h:1/ unreachable for 30.0 s (last error: AutoReconnect); nothing "
        "was lost: start the server again and rerun the same command to continue"
    )
    shown = pages.outage_text(cli)
    assert "rerun" not in shown and shown.startswith("MongoDB at mongodb://h:1/ unreachable")
    assert pages.outage_text("is it running?") == "is it running?"


def test_workers_timeline_fits_the_trials_and_has_a_legend(dash_store: TrialStore) -> None:
    """The timeline spans the shown trials (first start to last end), not a fixed 2-hour
    window in which a 75-s search is a sliver; ?key= shows one experiment's; a legend names
    the colours; tick labels are ISO 24-hour clock times."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    docs = []
    for t in range(4):  # a 75-s search: 4 trials of 15 s, 20 s apart, ending 5 minutes ago
        begin = now - dt.timedelta(seconds=375 - 20 * t)
        state = TrialState.ERROR if t == 3 else TrialState.DONE
        docs.append(trial_doc(t, state, book_time=begin, ended=begin + dt.timedelta(seconds=15)))
    make_experiment(dash_store, docs)
    other = trial_doc(9, TrialState.DONE, exp_key="other", book_time=now - dt.timedelta(hours=1))
    make_experiment(dash_store, [other], exp_key="other")
    c = client(dash_store)
    page = c.get("/workers", params={"key": EXP}).text
    rects = [
        (float(x), float(w))
        for x, w in re.findall(r'<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', page)
    ]
    assert len(rects) == 4
    assert min(x for x, _ in rects) == 260.0  # the label column's width: the first trial's start
    assert abs(max(x + w for x, w in rects) - 1260.0) < 0.5  # the last one's end: full width
    legend = page.split('id="timeline-legend"')[1].split("</p>")[0]
    assert 'data-state="done"' in legend and 'data-state="error"' in legend
    ticks = re.findall(r'text-anchor="middle">([^<]+)<', page)
    assert len(ticks) >= 3 and all(re.fullmatch(r"\d\d:\d\d(:\d\d)?", t) for t in ticks), ticks
    assert "1 h" not in page.split('id="timeline-title"')[1][:300]  # ~75 s, not the window
    both = c.get("/workers").text
    assert len(re.findall(r"<rect ", both)) == 5  # every experiment's over the fitted span


def test_workers_page_leaves_out_workers_long_stopped_or_silent(dash_store: TrialStore) -> None:
    """Issue 23: the workers table listed every registry row ever written; it lists the live
    ones and those stopped or silent within RECENT_WORKERS_S, says how many older ones it
    leaves out, and links to all of them (?all=1)."""
    now = dash_store.server_time()
    recent = defaults.RECENT_WORKERS_S
    rows = {
        "live": ("alive", now),
        "quit": ("stopped", now - dt.timedelta(seconds=recent / 2)),
        "quit-old": ("stopped", now - dt.timedelta(seconds=recent + 60)),
        "killed-old": ("alive", now - dt.timedelta(days=3)),
    }
    for wid, (state, seen) in rows.items():
        dash_store.workers.insert_one(
            {"_id": wid, "host": "h", "pid": 1, "state": state, "last_seen": seen}
        )
    make_experiment(dash_store, mixed())
    c = client(dash_store)
    page = c.get("/workers", params={"key": EXP})
    assert page.status_code == 200
    assert re.findall(r'data-worker="([^"]+)"', page.text) == ["live", "quit"]
    note = page.text.split('id="older-workers">')[1].split("</p>")[0]
    assert note.startswith("2 older workers not shown (stopped or silent for over 1 h)")
    assert f'href="/workers?key={EXP}&amp;all=1"' in note, note
    every = c.get("/workers", params={"key": EXP, "all": "1"}).text
    assert re.findall(r'data-worker="([^"]+)"', every) == list(rows)
    assert "the recent ones only" in every and "older workers not shown" not in every
    # an experiment's summary counts the live worker only (not the stopped or stale ones)
    assert c.get("/api/trials", params={"key": EXP, "since": 0}).json()["summary"]["workers"] == 1
