"""The inspection commands and the notebook API against searches run by real workers on a real
SecantusDB server: ``curves`` (nested choices, per-epoch val_loss, failures, workers pinned to
GPUs 0 and 1, which is harmless on CPUs) and ``quadratic``."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.inspect import columns, flatten, jsonable, render_export, sort_rows, trial_row
from coordinator.states import TrialState
from coordinator.store import connect
from coordinator.trials import open_trials, trial_rows
from tests.conftest import hyperfleet, run_search_with_workers, start_worker, stop_all, wait_for

SPACES = str(Path(__file__).with_name("inspect_spaces.py"))
CURVES, QUAD = "curves-t", "quad-t"


@pytest.fixture(scope="module")
def search(server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    db = f"t_{uuid.uuid4().hex[:10]}"
    logs = tmp_path_factory.mktemp("inspect-logs")
    # 0.1 s epochs (0.4 s trials): long enough that both registered workers get trials, which
    # the GPU columns below rely on, and not one fast worker all twelve
    curves = run_search_with_workers(
        server.uri, db, CURVES, "curves",
        ["--set", "fail_every=5", "--set", "sleep=0.1", "--max-evals", "12", "--algo", "rand",
         "--seed", "2", "--progress"],
        logs, spaces=SPACES,
    )  # fmt: skip
    worker = start_worker(server.uri, db, "--exp-key", QUAD, log=logs / "quad.log")
    try:
        quad = hyperfleet(
            "search", "quadratic", "--mongo", server.uri, "--db", db, "--exp-key", QUAD,
            "--max-evals", "10", "--seed", "1",
        )  # fmt: skip
        assert quad.returncode == 0, quad.stderr
    finally:
        stop_all([worker])
    store = connect(server.uri, db)
    yield {
        "uri": server.uri,
        "db": db,
        "store": store,
        "docs": store.trials(CURVES),
        "curves_stderr": curves.stderr,
        "quad_stderr": quad.stderr,
    }
    store.close()


def cli(search: dict[str, Any], *args: str, timeout: float = 120):
    return hyperfleet(*args, "--mongo", search["uri"], "--db", search["db"], timeout=timeout)


def best_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    done = [d for d in docs if d["state"] == TrialState.DONE and d["result"]["status"] == "ok"]
    return min(done, key=lambda d: d["result"]["loss"])


def table(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.strip().splitlines()]


# -- progress --------------------------------------------------------------------------------


def test_progress_bar_when_asked_and_summary_lines_otherwise(search) -> None:
    bar = search["curves_stderr"]
    assert re.search(r"curves-t: 100%.*12/12", bar), bar
    assert "running 0, queued 0, best loss" in bar and "failed" in bar
    # not a terminal and no --progress: one INFO line per tenth of max-evals, no bar
    lines = [ln for ln in search["quad_stderr"].splitlines() if "hyperfleet.progress" in ln]
    assert lines and "%|" not in search["quad_stderr"]
    assert re.search(r"quad-t: 10/10 done, running 0, queued 0, best loss [0-9.e-]+$", lines[-1])
    done_counts = [int(re.search(r"(\d+)/10 done", ln)[1]) for ln in lines]
    assert done_counts == sorted(set(done_counts))


# -- status and workers ------------------------------------------------------------------------


def test_status_of_all_and_one_experiment(search) -> None:
    docs = search["docs"]
    best = best_of(docs)
    errors = sum(d["state"] == TrialState.ERROR for d in docs)
    out = cli(search, "status")
    assert out.returncode == 0, out.stderr
    assert f"experiment {CURVES}  [done]  space curves" in out.stdout
    assert f"experiment {QUAD}  [done]  space quadratic" in out.stdout
    one = cli(search, "status", "--exp-key", CURVES)
    assert one.returncode == 0 and QUAD not in one.stdout
    assert f"12/12 finished: new 0, running 0, done {12 - errors}, error {errors}" in one.stdout
    number = 1 + sum(d["tid"] < best["tid"] for d in search["docs"])  # tids of the experiment
    best_line = f"best      loss {best['result']['loss']:.6g} (trial {number}, tid {best['tid']})"
    assert best_line in one.stdout
    quad_docs = search["store"].trials(QUAD)  # the second search: its tids follow CURVES's
    quad = best_of(quad_docs)
    number = 1 + sum(d["tid"] < quad["tid"] for d in quad_docs)
    quad_out = cli(search, "status", "--exp-key", QUAD).stdout
    assert number <= 10 < quad["tid"]
    assert f"(trial {number}, tid {quad['tid']})" in quad_out, quad_out
    assert re.search(r"rate      [0-9.]+ trials/min\n", one.stdout)
    assert "workers   0 live" in one.stdout


def test_the_rate_of_a_search_that_ended_is_over_its_span(store) -> None:
    """Issue 23: trials/min ran up to now, so a search that ended (or whose coordinator died,
    leaving its status "running") showed a rate that kept falling with the clock. With no trial
    queued or running it is taken over the search's span, first start to last end."""
    from coordinator import inspect as ins
    from tests.dashboard.conftest import make_experiment, trial_doc

    start = store.server_time() - dt.timedelta(hours=2)

    def ten_minutes(key: str) -> list[dict[str, Any]]:  # 10 trials, one a minute, 2 h ago
        minute = dt.timedelta(minutes=1)
        return [
            trial_doc(
                t,
                TrialState.DONE,
                key,
                book_time=start + t * minute,
                ended=start + (t + 1) * minute,
            )
            for t in range(10)
        ]

    make_experiment(store, ten_minutes("ended"), exp_key="ended", status="done")
    make_experiment(store, ten_minutes("dead"), exp_key="dead", status="running")
    queued = [*ten_minutes("queued"), trial_doc(10, TrialState.NEW, "queued")]
    make_experiment(store, queued, exp_key="queued", status="running")
    rates = {
        key: ins.summarize(store, store.get_experiment(key), []).rate_per_min
        for key in ("ended", "dead", "queued")
    }
    assert rates["ended"] == pytest.approx(1.0) and rates["dead"] == pytest.approx(1.0), rates
    # a trial still queued: the search goes on, its rate runs up to now (10 in ~2 h)
    assert rates["queued"] == pytest.approx(10 / 120, rel=0.05), rates


def test_workers_live_stale_and_stopped(search, tmp_path: Path) -> None:
    # --no-warm: a warm worker would first wait seconds for experiment "idle", which never comes
    w = start_worker(search["uri"], search["db"], "--exp-key", "idle", "--gpu", "3", "--no-warm")
    try:
        store = search["store"]
        wait_for(lambda: store.list_workers(), 90, what="the idle worker's heartbeat")
        out = cli(search, "workers")
        assert out.returncode == 0, out.stderr
        rows = table(out.stdout)
        assert rows[0][:4] == ["worker", "host", "pid", "gpu"]
        assert rows[1][3] == "3" and rows[1][-1] == "alive"  # the newest heartbeat first
        # the search's three workers stopped minutes ago: listed as stopped (issue 23)
        assert [row[-1] for row in rows[2:]] == ["stopped"] * 3, out.stdout
        status = cli(search, "status", "--exp-key", CURVES)
        assert "workers   0 live" in status.stdout, "a worker of another exp key is not counted"
        stale = cli(search, "workers", "--stale-after", "0")
        assert table(stale.stdout)[1][-1] == "STALE"
    finally:
        stop_all([w])
    # stopped within the last hour: still listed (issue 23), as stopped
    gone = cli(search, "workers")
    assert gone.returncode == 0, gone.stderr
    states = [row[-1] for row in table(gone.stdout)[1:]]
    assert states == ["stopped"] * 4, gone.stdout  # two curves workers, the quadratic one, idle
    every = cli(search, "workers", "--all")
    states = [row[-1] for row in table(every.stdout)[1:]]
    assert states.count("stopped") == 4


# -- top and show --------------------------------------------------------------------------------


def test_top_lists_the_best_first_with_decoded_params(search) -> None:
    docs = search["docs"]
    best = best_of(docs)
    out = cli(search, "top", "--exp-key", CURVES, "-n", "3")
    assert out.returncode == 0, out.stderr
    rows = table(out.stdout)
    header = rows[0]
    assert header[:4] == ["#", "tid", "trial", "loss"]
    for name in ("val_accuracy", "lr", "optimizer.name", "units", "worker.gpu"):
        assert name in header
    assert len(rows) == 4 and rows[1][:3] == ["1", str(best["tid"]), str(best["tid"] + 1)]
    losses = [float(r[3]) for r in rows[1:]]
    assert losses == sorted(losses)
    by_acc = cli(search, "top", "--exp-key", CURVES, "--by", "result.val_accuracy", "--desc")
    acc_rows = table(by_acc.stdout)
    acc = [float(r[acc_rows[0].index("val_accuracy")]) for r in acc_rows[1:]]
    n_done = sum(d["state"] == TrialState.DONE for d in docs)
    assert acc == sorted(acc, reverse=True) and len(acc) == min(10, n_done)
    failed_in = cli(search, "top", "--exp-key", CURVES, "--all-states", "-n", "50")
    assert "error" in failed_in.stdout and len(table(failed_in.stdout)) == 13


def test_show_a_trial_with_epochs_and_one_with_a_traceback(search) -> None:
    docs = search["docs"]
    best = best_of(docs)
    out = cli(search, "show", "--exp-key", CURVES, str(best["tid"]))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    # CURVES ran first in this database: its trial numbers are its tids plus one
    assert text.startswith(f"tid {best['tid']} (trial {best['tid'] + 1}) of {CURVES}: done")
    assert "epochs (4)" in text and "val_loss" in text
    assert re.search(r"^    optimizer\.name\s+(adam|sgd)$", text, re.M)
    assert re.search(r"^    gpu\s+[01]$", text, re.M) and "cuda_visible_devices" in text
    assert re.search(r"^    duration\s+[0-9.]+ s$", text, re.M)  # seconds, tenths below 10 s
    assert re.search(r"^    failed attempts\s+0$", text, re.M)
    failed = next(d for d in docs if d["state"] == TrialState.ERROR)
    err = cli(search, "show", "--exp-key", CURVES, str(failed["tid"]))
    assert err.returncode == 0
    assert "error: ValueError: trial" in err.stdout and "Traceback (most recent call" in err.stdout


# -- export ----------------------------------------------------------------------------------


def test_export_csv_columns_and_rows(search, tmp_path: Path) -> None:
    path = tmp_path / "trials.csv"
    out = cli(search, "export", "--exp-key", CURVES, "-o", str(path))
    assert out.returncode == 0, out.stderr
    assert "wrote 12 trials" in out.stderr
    with path.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames
    assert len(rows) == 12
    assert header[:5] == ["tid", "trial", "state", "status", "loss"]
    for name in (
        "params.lr",
        "params.optimizer.name",
        "params.optimizer.momentum",
        "params.units",
        "result.val_accuracy",
        "last_epoch.val_loss",
        "epochs",
        "duration_s",
        "book_time",
        "ended",
        "attempt",
        "failed_attempts",
        "worker.host",
        "worker.gpu",
        "worker.cuda_visible_devices",
        "worker.save_models",
        "worker.jax_compile_cache",  # documented as exported (empty here: TensorFlow)
        "error.type",
    ):
        assert name in header, name
    sgd = [r for r in rows if r["params.optimizer.name"] == "sgd"]
    adam = [r for r in rows if r["params.optimizer.name"] == "adam"]
    assert all(r["params.optimizer.momentum"] for r in sgd)
    assert all(r["params.optimizer.momentum"] == "" for r in adam)
    assert {r["worker.gpu"] for r in rows} == {"0", "1"}
    assert {r["state"] for r in rows} == {"done", "error"}
    assert all(r["ended"].endswith("Z") for r in rows)


def test_export_json_round_trip_and_jsonl(search, tmp_path: Path) -> None:
    api_rows = trial_rows(search["uri"], CURVES, db=search["db"], dataframe=False)
    path = tmp_path / "trials.json"  # the format follows the extension
    assert cli(search, "export", "--exp-key", CURVES, "-o", str(path)).returncode == 0
    exported = json.loads(path.read_text())
    assert exported == [{k: jsonable(v) for k, v in r.items()} for r in api_rows]
    lines = cli(search, "export", "--exp-key", CURVES, "--format", "jsonl")
    parsed = [json.loads(line) for line in lines.stdout.splitlines()]
    assert parsed == exported


# -- plot ------------------------------------------------------------------------------------------


def assert_nontrivial_png(path: Path) -> None:
    import matplotlib.image as mpimg
    import numpy as np

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = mpimg.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400, path
    rgb = (pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours = np.unique(rgb, axis=0)
    assert len(colours) > 50, f"{path}: only {len(colours)} colours"
    assert (rgb < 250).any(axis=1).mean() > 0.03, f"{path}: almost blank"


def test_plot_writes_four_nontrivial_pngs(search, tmp_path: Path) -> None:
    out_dir = tmp_path / "plots" / "nested"
    out = cli(search, "plot", "--exp-key", CURVES, "-o", str(out_dir), "--spaces", SPACES)
    assert out.returncode == 0, out.stderr
    names = {"loss_over_time.png", "params.png", "learning_curves.png", "timeline.png"}
    assert {Path(p).name for p in out.stdout.split()} == names
    for name in names:
        assert_nontrivial_png(out_dir / name)


def test_plot_without_epochs_skips_learning_curves(search, tmp_path: Path) -> None:
    out = cli(search, "plot", "--exp-key", QUAD, "-o", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "skipped learning_curves.png: no successful trial reported per-epoch" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "loss_over_time.png",
        "params.png",
        "timeline.png",
    ]


# -- notebook API --------------------------------------------------------------------------------


def test_notebook_api(search) -> None:
    trials = open_trials(search["uri"], CURVES, db=search["db"])
    errors = sum(d["state"] == TrialState.ERROR for d in search["docs"])
    assert len(trials.trials) == 12 - errors  # hyperopt's Trials hide ERROR trials; rows do not
    assert trials.best_trial["tid"] == best_of(search["docs"])["tid"]
    rows = trial_rows(trials, dataframe=False)
    assert [r["tid"] for r in rows] == [d["tid"] for d in search["docs"]]
    assert all("params.lr" in r and isinstance(r["book_time"], dt.datetime) for r in rows)
    try:
        import pandas  # noqa: F401
    except ImportError:
        assert trial_rows(trials) == rows, "without pandas the default is a list of rows"
    else:
        frame = trial_rows(trials)
        assert list(frame["tid"]) == [r["tid"] for r in rows]


# -- bad input -------------------------------------------------------------------------------


BAD_INPUT = [
    (["status", "--exp-key", "nosuch"], "no experiment 'nosuch'"),
    (["top", "--exp-key", "nosuch"], "no experiment 'nosuch'"),
    (["show", "--exp-key", "nosuch", "1"], "no experiment 'nosuch'"),
    (["export", "--exp-key", "nosuch"], "no experiment 'nosuch'"),
    (["plot", "--exp-key", "nosuch", "-o", "{tmp}/p"], "no experiment 'nosuch'"),
    (["top", "--exp-key", CURVES, "--by", "nope"], "unknown field 'nope' for --by"),
    (["show", "--exp-key", CURVES, "999"], "has no trial 999"),
    (["export", "--exp-key", CURVES, "-o", "{tmp}/no/such/dir/x.csv"], "cannot write"),
    (["plot", "--exp-key", CURVES, "-o", "{tmp}/file/p"], "cannot create"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_clear_line(search, tmp_path: Path, args, message) -> None:
    """In-process through click's runner (a process per case is slow on small machines); the
    real-process case below shows the same line reaches a terminal."""
    from click.testing import CliRunner

    from coordinator.cli import main

    (tmp_path / "file").write_text("a file, not a directory")
    argv = [a.format(tmp=tmp_path) for a in args] + ["--mongo", search["uri"], "--db", search["db"]]
    out = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert out.exit_code != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert message in lines[0] and "Traceback" not in out.stderr


def test_bad_input_in_a_real_process(search) -> None:
    out = cli(search, "top", "--exp-key", "nosuch", timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"Error: no experiment 'nosuch' in database '{search['db']}' (known: {CURVES}, {QUAD})"
    )


# -- pure functions ------------------------------------------------------------------------------


def test_flatten_rows_columns_and_sorting() -> None:
    assert flatten({"a": {"b": 1}, "c": [2, {"d": 3}]}, "p") == {
        "p.a.b": 1,
        "p.c.0": 2,
        "p.c.1.d": 3,
    }
    doc = {
        "tid": 4,
        "state": 2,
        "result": {"loss": 0.5, "status": "ok", "acc": 0.9},
        "params": {"opt": {"name": "sgd", "lr": 0.1}},
        "epochs": [{"epoch": 1, "val_loss": 0.7}, {"epoch": 2, "val_loss": 0.5}],
        "worker": {"id": "h:1:x", "host": "h", "gpu": "0"},
    }
    row = trial_row(doc)
    assert row["state"] == "done" and row["params.opt.lr"] == 0.1 and row["result.acc"] == 0.9
    assert row["last_epoch.val_loss"] == 0.5 and row["epochs"] == 2 and row["worker.gpu"] == "0"
    other = trial_row({"tid": 5, "state": 3, "result": {"status": "fail"}, "params": {"x": 1}})
    names = columns([row, other])
    assert names[:4] == ["tid", "state", "status", "loss"]
    assert names[4:7] == ["params.opt.lr", "params.opt.name", "params.x"]
    assert [r["tid"] for r in sort_rows([other, row], "loss")] == [4, 5]
    assert [r["tid"] for r in sort_rows([row, other], "tid", descending=True)] == [5, 4]
    csv_text = render_export([row, other], "csv")
    assert csv_text.splitlines()[0].startswith("tid,state,status,loss,params.opt.lr")
    assert jsonable(dt.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05.000Z"
    assert jsonable(float("nan")) is None


def test_a_worker_whose_heartbeat_is_in_the_future_is_stale_not_alive(server, store) -> None:
    """Issue 22, item 6: a worker row stamped ahead of the server's clock (a hand edit, another
    program's clock) showed as alive with age '-315359955 s' (then '0.0 s'); it is no sign of
    life: `workers` and `status` call it stale, and the live count leaves it out."""
    from tests.conftest import hyperfleet

    now = store.server_time()
    for wid, seen in (("ahead", dt.datetime(2036, 1, 1)), ("here", now)):
        store.workers.insert_one(
            {"_id": wid, "host": "h", "pid": 1, "state": "alive", "last_seen": seen}
        )
    out = hyperfleet("workers", "--mongo", server.uri, "--db", store.db_name)
    assert out.returncode == 0, out.stderr
    ahead = next(line for line in out.stdout.splitlines() if line.startswith("ahead"))
    assert "in the future" in ahead and "STALE (clock ahead)" in ahead and "alive" not in ahead
    here = next(line for line in out.stdout.splitlines() if line.startswith("here"))
    assert here.rstrip().endswith("alive")
    assert [w.id for w in store_live(store)] == ["here"]


def test_listings_leave_out_workers_long_stopped_or_silent(server, store) -> None:
    """Issue 23: `workers` and `status` listed every registry row ever written (killed workers
    ALIVE days ago, every stopped one); by default they list the live ones and those stopped or
    silent within RECENT_WORKERS_S, say how many older ones they leave out, and `workers --all`
    lists them all."""
    from coordinator import defaults
    from tests.dashboard.conftest import make_experiment

    now = store.server_time()
    recent = defaults.RECENT_WORKERS_S
    rows = {  # newest first, as the registry lists them
        "live": ("alive", now),
        "lost": ("alive", now - dt.timedelta(seconds=recent / 6)),  # STALE, still listed
        "quit": ("stopped", now - dt.timedelta(seconds=recent / 3)),
        "quit-old": ("stopped", now - dt.timedelta(seconds=recent + 60)),
        "killed-old": ("alive", now - dt.timedelta(days=3)),
    }
    for wid, (state, seen) in rows.items():
        store.workers.insert_one(
            {"_id": wid, "host": "h", "pid": 1, "state": state, "last_seen": seen}
        )
    make_experiment(store, [], exp_key="e", status="done")
    db = ["--mongo", server.uri, "--db", store.db_name]
    out = hyperfleet("workers", *db)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == ["live", "lost", "quit"], out.stdout
    assert [line.split()[-1] for line in lines[1:-1]] == ["alive", "STALE", "stopped"]
    assert lines[-1] == (
        "2 older workers not shown (stopped or silent for over 1 h): --all lists them"
    )
    every = hyperfleet("workers", *db, "--all")
    assert [row[0] for row in table(every.stdout)[1:]] == list(rows), every.stdout
    assert "not shown" not in every.stdout
    status = hyperfleet("status", *db, "--exp-key", "e")
    assert status.returncode == 0, status.stderr
    assert "  workers   1 live, 1 STALE, 1 stopped\n" in status.stdout, status.stdout
    assert re.search(r"\n    quit: idle, last heartbeat 20 min \d+ s ago  stopped\n", status.stdout)
    assert "old" not in status.stdout.replace("older", "")
    assert "    2 older workers not shown (stopped or silent for over 1 h): `hyperfleet " in (
        status.stdout
    )


def store_live(store):
    from coordinator import inspect as ins

    return [w for w in ins.worker_views(store) if not w.stale]
