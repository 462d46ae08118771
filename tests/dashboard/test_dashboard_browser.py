"""The dashboard in a real browser: headless Debian chromium driven by Python playwright, against
the real ``hyperfleet dashboard`` process, the embedded server and real ``hyperfleet worker``
processes (``make test-browser``; skipped with the reason when chromium or playwright is missing).

Set ``HYPERFLEET_SCREENSHOT=1`` to rewrite docs/dashboard-experiment.png and
docs/dashboard-workers.png from a real ASHA search (test_a_real_pruned_search_and_the_screenshot).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore, connect
from tests.conftest import (
    ROOT,
    TEST_SPACES,
    queue_trials,
    run_search_with_workers,
    start_worker,
    stop_all,
    wait_for,
)
from tests.dashboard.conftest import make_experiment, start, trial_doc

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "docs" / "dashboard-experiment.png"
WORKERS_SCREENSHOT = ROOT / "docs" / "dashboard-workers.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (make test-browser does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Python playwright is missing: `pip install playwright`")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Page:
    """A browser tab that records every console error and uncaught exception."""

    def __init__(self, browser: Any) -> None:
        # bypass_csp: playwright's waits evaluate strings; and the escaping test must show that
        # escaping alone keeps a <script> from running (the CSP is a second line, tested apart)
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda m: (
                self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None
            ),
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("dialog", lambda d: d.accept())

    def open(self, url: str) -> Any:
        response = self.page.goto(url)
        self.page.wait_for_load_state("networkidle")
        return response


@pytest.fixture
def tab(browser: Any) -> Iterator[Page]:
    page = Page(browser)
    yield page
    page.page.close()


@pytest.fixture
def db_store(server: EmbeddedServer, db_name: str) -> Iterator[TrialStore]:
    s = connect(server.uri, db_name)
    yield s
    s.drop_database()
    s.close()


@pytest.fixture
def dashboard(server: EmbeddedServer, db_name: str, tmp_path: Path, tab: Page) -> Iterator[Any]:
    """Start ``hyperfleet dashboard`` processes (``start(*args) -> url``), each with its own
    secret, and log ``tab`` in to each (its printed login URL); stopped after."""
    procs: list[subprocess.Popen[str]] = []

    def run(*args: str) -> str:
        started = start(server.uri, db_name, *args, log=tmp_path / f"dashboard{len(procs)}.log")
        procs.append(started.proc)
        assert tab.open(started.login).status == 200
        return started.url

    yield run
    stop_all(procs)


def test_pages_of_a_real_search_load_without_console_errors(
    server: EmbeddedServer,
    db_name: str,
    db_store: TrialStore,
    dashboard: Any,
    tab: Page,
    tmp_path: Path,
) -> None:
    run_search_with_workers(
        server.uri,
        db_name,
        "real",
        "epochs",
        [
            "--max-evals",
            "14",
            "--algo",
            "rand",
            "--seed",
            "3",
            "--set",
            "epochs=8",
            "--set",
            "sleep=0.02",
        ],
        tmp_path,
        spaces=TEST_SPACES,
    )
    url = dashboard()
    assert tab.open(url).status == 200
    assert tab.page.locator("tr[data-exp='real']").count() == 1
    tab.open(f"{url}exp?key=real")
    tab.page.wait_for_function("Number(document.body.dataset.trials) === 14")
    assert tab.page.locator("#summary [data-field='finished']").text_content() == "14"
    assert tab.page.locator("#chart-curves canvas").count() == 1
    assert tab.page.locator("#chart-loss canvas").count() == 1
    assert tab.page.locator("#trials tbody tr").count() == 14
    tab.page.locator("th[data-col='loss']").click()  # sort by loss: the best trial first
    best = db_store.best_trial("real")
    assert best is not None
    first = tab.page.locator("#trials tbody tr").first.get_attribute("data-tid")
    assert first == str(best["tid"])
    tab.open(f"{url}trial?key=real&tid={best['tid']}")
    assert tab.page.locator("#epochs tbody tr").count() == 8
    assert tab.page.locator("#chart-epochs canvas").count() == 1
    tab.open(f"{url}workers")
    assert tab.page.locator("svg.timeline rect").count() == 14
    assert tab.errors == []


def test_a_trial_finished_by_a_live_worker_appears_without_reload(
    server: EmbeddedServer,
    db_name: str,
    db_store: TrialStore,
    dashboard: Any,
    tab: Page,
    tmp_path: Path,
) -> None:
    queue_trials(db_store, 2, exp_key="live", space="epochs", settings={"epochs": 4, "sleep": 0.3})
    url = dashboard()
    tab.open(f"{url}exp?key=live")
    tab.page.wait_for_function("Number(document.body.dataset.trials) === 2")
    assert tab.page.locator("#summary [data-field='finished']").text_content() == "0"
    tab.page.evaluate("window.__sameDocument = true")
    worker = start_worker(
        server.uri,
        db_name,
        "--spaces",
        TEST_SPACES,
        "--exp-key",
        "live",
        "--max-trials",
        "1",
        log=tmp_path / "worker.log",
    )
    try:
        # the running trial's curve grows while it trains, then the trial is done
        tab.page.wait_for_selector("#chart-curves canvas", timeout=60_000)
        tab.page.wait_for_function(
            "document.querySelector(\"#summary [data-field='finished']\").textContent === '1'",
            timeout=60_000,
        )
    finally:
        stop_all([worker])
    assert tab.page.evaluate("window.__sameDocument") is True  # no reload happened
    assert tab.page.locator("#trials .chip[data-state='done']").count() == 1
    assert tab.errors == []


def test_cancel_works_with_allow_actions_and_is_refused_without(
    db_store: TrialStore, dashboard: Any, tab: Page
) -> None:
    make_experiment(
        db_store, [trial_doc(t, TrialState.NEW, exp_key="c") for t in range(3)], exp_key="c"
    )
    read_only = dashboard()
    tab.open(f"{read_only}exp?key=c")
    assert tab.page.locator("#cancel-form").count() == 0
    # even a hand-made POST from the page itself is refused
    status = tab.page.evaluate(
        "fetch('/actions/cancel', {method: 'POST', headers: {'Content-Type': "
        "'application/x-www-form-urlencoded'}, body: 'key=c&token=x'}).then(r => r.status)"
    )
    assert status == 403 and not db_store.cancel_requested("c")

    allowed = dashboard("--allow-actions")
    tab.open(f"{allowed}exp?key=c")
    tab.page.locator("#cancel-form button").click()
    tab.page.wait_for_selector(".notice")
    assert "Cancel requested" in (tab.page.locator(".notice").text_content() or "")
    assert db_store.cancel_requested("c")
    wait_for(lambda: db_store.count("c", [TrialState.CANCEL]) == 3, what="cancelled trials")
    tab.page.wait_for_function(
        "document.querySelector(\"[data-field='status']\").textContent === 'cancelled'"
    )
    tab.errors = [e for e in tab.errors if "403" not in e]  # the refused POST above
    assert tab.errors == []


def test_script_in_the_database_never_runs(db_store: TrialStore, dashboard: Any, tab: Page) -> None:
    script = "<script>window.__pwned=1</script>"
    image = '<img src=x onerror="window.__pwned=2">'
    evil = trial_doc(
        0,
        TrialState.ERROR,
        exp_key="x",
        params={"x": 0.5, "name": image},
        error={"type": "ValueError", "message": script, "traceback": f"</pre>{script}"},
    )
    make_experiment(
        db_store, [evil, trial_doc(1, TrialState.DONE, exp_key="x")], exp_key="x", space=script
    )
    url = dashboard()
    for path in ("", "exp?key=x", "trial?key=x&tid=0", "workers"):
        tab.open(url + path)
        if path == "exp?key=x":
            tab.page.wait_for_function("Number(document.body.dataset.trials) === 2")
            assert image in (tab.page.locator("#trials").text_content() or "")
        if path.startswith("trial"):
            assert script in (tab.page.locator("#error .message").text_content() or "")
        assert tab.page.evaluate("window.__pwned") is None, path
    assert tab.errors == []


def test_database_down_shows_a_message(
    server: EmbeddedServer, tmp_path: Path, browser: Any, tab: Page
) -> None:
    """A dashboard whose database stops: the next page says so (503, no traceback)."""
    own = EmbeddedServer(tmp_path / "db", sync=False).start()
    store = connect(own.uri, "d")
    make_experiment(store, [trial_doc(0, TrialState.DONE, exp_key="d")], exp_key="d")
    store.close()
    started = start(own.uri, "d", log=tmp_path / "dashboard.log")
    proc, url = started.proc, started.url
    try:
        tab.open(f"{started.url}?token={started.token}")
        tab.open(f"{url}exp?key=d")
        tab.page.wait_for_function("Number(document.body.dataset.trials) === 1")
        own.stop()
        # the open page keeps polling and shows the trouble in its banner
        tab.page.wait_for_selector("#banner:not([hidden])", timeout=30_000)
        banner = tab.page.locator("#banner").text_content() or ""
        assert "MongoDB" in banner
        # the page recovers by itself: no advice to rerun a command (issue 23)
        assert "recovers by itself" in banner and "rerun the same command" not in banner
        response = tab.open(f"{url}exp?key=d")
        assert response.status == 503
        body = tab.page.locator("main").text_content() or ""
        assert "database is unavailable" in body and "Traceback" not in body
    finally:
        stop_all([proc])
        if own.process is not None and own.process.poll() is None:
            own.stop()


def test_login_url_opens_the_dashboard_and_nothing_else_does(
    db_store: TrialStore, server: EmbeddedServer, db_name: str, browser: Any, tmp_path: Path
) -> None:
    """Issue 24: the login flow. A browser without the secret gets the login page (no data);
    the printed URL logs it in (cookie HttpOnly, SameSite=Strict, the token gone from the
    address bar) and the pages then work, actions included; another browser stays out."""
    make_experiment(
        db_store, [trial_doc(t, TrialState.NEW, exp_key="p") for t in range(2)], exp_key="p"
    )
    started = start(server.uri, db_name, "--allow-actions", log=tmp_path / "dashboard.log")
    mine, other = Page(browser), Page(browser)
    try:
        refused = other.open(f"{started.url}exp?key=p")
        assert refused.status == 401
        assert "private" in (other.page.locator("h1").text_content() or "")
        assert other.page.locator("[data-exp]").count() == 0
        assert mine.open(f"{started.url}exp?key=p&token={started.token}").status == 200
        assert mine.page.url == f"{started.url}exp?key=p"  # the token left the address bar
        mine.page.wait_for_function("Number(document.body.dataset.trials) === 2")
        cookies = mine.page.context.cookies()
        assert [c["name"] for c in cookies] == [
            f"hyperfleet-dashboard-{started.url.split(':')[2][:-1]}"
        ]
        assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
        assert started.token not in cookies[0]["value"]
        assert mine.page.evaluate("document.cookie") == ""  # scripts cannot read it
        mine.page.locator("#cancel-form button").click()
        mine.page.wait_for_selector(".notice")
        assert db_store.cancel_requested("p")
        # the other browser, even with the page's action token, cannot act
        status = other.page.evaluate(
            "fetch('/actions/cancel', {method: 'POST', headers: {'Content-Type': "
            "'application/x-www-form-urlencoded'}, body: 'key=p&token=x'}).then(r => r.status)"
        )
        assert status == 401
        assert mine.errors == []
    finally:
        mine.page.close()
        other.page.close()
        stop_all([started.proc])


# -- issue 23: charts a person reads at a glance --------------------------------------------------

#: a chart's uPlot object (the page keeps them in window.hf.plots for these tests)
PLOT = "window.hf.plots[{!r}].plot"


def _plot(tab: Page, chart: str, expr: str) -> Any:
    return tab.page.evaluate(f"(() => {{ const u = {PLOT.format(chart)}; return {expr}; }})()")


def _ticks(tab: Page, chart: str) -> list[str]:
    return [v for v in _plot(tab, chart, "u.axes[0]._values") if v]


def test_charts_read_at_a_glance(db_store: TrialStore, dashboard: Any, tab: Page) -> None:
    """Issue 23's chart list on a real space (mnist_mlp's trials, drawn by hyperopt, with
    losses, curves and per-epoch seconds written as a worker would): whole epoch ticks; the
    learning rate (hp.loguniform) on a log axis, a dropout (hp.uniform) on a linear one; a loss
    log toggle; trials pruned at epoch 1 drawn, each with an x, and a legend; time axes in ISO
    24-hour UTC, or the time elapsed since the start; the importance panel; the trial page's
    per-epoch seconds on their own axis and its "pruned" badge; rates without two decimals; the
    experiments table within 1,280 px."""
    from tests.dashboard.chart_data import decaying, lr_loss, space_trials

    def pruned_at_1(tid: int) -> int | None:
        return 1 if tid % 6 == 5 else None

    docs = space_trials(
        "mnist_mlp", 24, "charts", loss=lr_loss, epochs=decaying(8), pruned=pruned_at_1
    )
    make_experiment(db_store, docs, exp_key="charts", space="mnist_mlp", status="done")
    url = dashboard()
    tab.page.set_viewport_size({"width": 1280, "height": 1000})
    tab.open(url)
    fits = "(() => { const w = document.querySelector('.table-wrap'); "
    fits += "return w.scrollWidth <= w.clientWidth; })()"
    assert tab.page.evaluate(fits), "the experiments table is wider than 1,280 px"
    tab.open(f"{url}exp?key=charts")
    tab.page.wait_for_function("Number(document.body.dataset.trials) === 24")
    tab.page.wait_for_selector("#importance tr[data-param]")

    # learning curves: whole epochs, the 4 trials pruned at epoch 1 drawn with an x each
    assert all(v.isdigit() for v in _ticks(tab, "chart-curves"))
    assert _plot(tab, "chart-curves", "u.axes[0]._splits.every(Number.isInteger)")
    assert tab.page.locator("#chart-curves").get_attribute("data-stop-marks") == "4"
    legend = tab.page.locator("#curves-legend").text_content() or ""
    assert "pruned: stopped early at the × (4)" in legend and "done" in legend

    # parameter against loss: the space's log-distributed learning rate on a log axis
    tab.page.select_option("#param", "params.optimizer.learning_rate")
    assert _plot(tab, "chart-params", "u.scales.x.distr") == 3
    tab.page.select_option("#param", "params.layers.0.dropout")
    assert _plot(tab, "chart-params", "u.scales.x.distr") == 1

    # the loss axis: log at a tick (by default when the losses span > 2 decades)
    tab.page.locator("#log-loss").check()
    assert _plot(tab, "chart-best", "u.scales.y.distr") == 3
    assert _plot(tab, "chart-loss", "u.scales.y.distr") == 3
    tab.page.locator("#log-loss").uncheck()
    assert _plot(tab, "chart-best", "u.scales.y.distr") == 1
    assert _plot(tab, "chart-loss", "u.scales.y.distr") == 1

    # time axes: ISO 24-hour clock times (UTC), or the time since the first trial started
    clock = _ticks(tab, "chart-best")
    assert clock and all(re.fullmatch(r"\d\d:\d\d(:\d\d)?", v) for v in clock), clock
    tab.page.select_option("#time-axis", "elapsed")
    elapsed = _ticks(tab, "chart-loss")
    assert elapsed and all(re.fullmatch(r"\d+:\d\d(:\d\d)?", v) for v in elapsed), elapsed
    assert _plot(tab, "chart-loss", "u.scales.x.min") < 200  # seconds since the start

    # which parameters mattered, and a rate as a person reads it
    assert tab.page.locator("#importance tr[data-param]").count() >= 3
    assert "(Optuna) over 20 full trials; 4 pruned left out" in (
        tab.page.locator("#importance").text_content() or ""
    )

    # a pruned trial's page: its badge, and per-epoch seconds on their own axis
    tab.open(f"{url}trial?key=charts&tid=5")
    assert tab.page.locator("#state-badge .chip").get_attribute("data-state") == "pruned"
    tab.open(f"{url}trial?key=charts&tid=0")
    scales = tab.page.evaluate(
        "Object.fromEntries(window.hf.plot.series.slice(1).map((s) => [s.label, s.scale]))"
    )
    assert scales == {"loss": "y", "val_loss": "y", "accuracy": "acc", "seconds": "s"}
    assert tab.page.evaluate("window.hf.plot.axes[0]._splits.every(Number.isInteger)")
    assert tab.errors == []


def test_a_space_without_epochs_says_so_in_the_browser(
    db_store: TrialStore, dashboard: Any, tab: Page
) -> None:
    make_experiment(
        db_store,
        [trial_doc(t, TrialState.DONE, exp_key="flat", epochs=[]) for t in range(3)],
        exp_key="flat",
    )
    url = dashboard()
    tab.open(f"{url}exp?key=flat")
    tab.page.wait_for_function("Number(document.body.dataset.trials) === 3")
    text = tab.page.locator("#chart-curves").text_content()
    assert text == "this space reports no per-epoch metrics"
    assert tab.errors == []


def test_a_real_pruned_search_and_the_screenshot(
    server: EmbeddedServer,
    db_name: str,
    dashboard: Any,
    tab: Page,
    tmp_path: Path,
) -> None:
    """A real ASHA search (real workers): pruned curves end in an x, the workers timeline
    spans the search with a legend. ``HYPERFLEET_SCREENSHOT=1`` rewrites
    docs/dashboard-experiment.png from this page."""
    run_search_with_workers(
        server.uri,
        db_name,
        "asha",
        "epochs",
        [
            "--max-evals",
            "24",
            "--algo",
            "rand",
            "--seed",
            "5",
            "--prune",
            "asha",
            "--set",
            "epochs=9",
            "--set",
            "sleep=0.2",
        ],
        tmp_path,
        spaces=TEST_SPACES,
    )
    url = dashboard()
    tab.page.set_viewport_size({"width": 1280, "height": 1000})
    tab.open(f"{url}exp?key=asha")
    tab.page.wait_for_function("Number(document.body.dataset.trials) === 24")
    marks = int(tab.page.locator("#chart-curves").get_attribute("data-stop-marks") or 0)
    pruned = tab.page.locator("#curves-legend .key[data-state='pruned']")
    assert marks >= 1 and pruned.count() == 1
    if os.environ.get("HYPERFLEET_SCREENSHOT") == "1":
        tab.page.screenshot(path=str(SCREENSHOT), full_page=False)
        tab.open(f"{url}workers?key=asha")
        tab.page.screenshot(path=str(WORKERS_SCREENSHOT), full_page=False)
    tab.open(f"{url}workers?key=asha")
    assert tab.page.locator("svg.timeline rect").count() == 24
    assert tab.page.locator("#timeline-legend .key").count() >= 2  # done and pruned
    assert tab.errors == []
