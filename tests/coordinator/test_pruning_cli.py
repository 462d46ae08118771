"""``--prune`` end to end through the real CLI: a search with two workers stops trials early,
and ``status``, ``top``, ``show`` and ``export`` say which; a rerun with another rule is
refused; bad pruning options are one line."""

from __future__ import annotations

import csv
import io

from coordinator.server import EmbeddedServer
from tests.conftest import cli_env, hyperfleet, start_worker, stop_all

SPACES = "tests/spaces_for_tests.py"


def test_a_pruned_search_through_the_cli(server: EmbeddedServer, db_name: str) -> None:
    uri = server.uri
    key = "pruned-cli"
    common = ["--mongo", uri, "--db", db_name]
    workers = [
        start_worker(uri, db_name, "--exp-key", key, "--spaces", SPACES, "--idle-timeout", "60")
        for _ in range(2)
    ]
    try:
        search = hyperfleet(
            "search", "epochs", *common, "--exp-key", key, "--spaces", SPACES,
            "--max-evals", "12", "--set", "epochs=9", "--set", "sleep=0.0",
            "--prune", "asha", "--no-progress", "--seed", "3",
            timeout=300,
        )  # fmt: skip
        assert search.returncode == 0, search.stderr
        assert "pruned" in search.stderr  # the progress line counts them
    finally:
        stop_all(workers)

    status = hyperfleet("status", *common, "--exp-key", key)
    assert status.returncode == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if x.strip().startswith("pruned"))
    assert "done trials were stopped early" in line

    rows = list(csv.DictReader(io.StringIO(hyperfleet("export", *common, "--exp-key", key).stdout)))
    pruned = [r for r in rows if r["pruned"]]
    assert pruned and all(r["result.pruned.rule"] == "asha" for r in pruned)
    assert all(int(r["pruned"]) < 9 and r["state"] == "done" for r in pruned)

    top = hyperfleet("top", *common, "--exp-key", key, "-n", "12")
    assert top.returncode == 0 and "pruned" in top.stdout.splitlines()[0]
    # ranked as `best` ranks: every trial that ran to its end before every pruned one
    pruned_tids = {r["tid"] for r in pruned}
    order = [line.split()[1] in pruned_tids for line in top.stdout.splitlines()[1:] if line]
    assert order == sorted(order) and True in order and False in order, top.stdout
    best = hyperfleet("best", *common, "--exp-key", key)
    assert f"tid {top.stdout.splitlines()[1].split()[1]}," in best.stdout, (best.stdout, top.stdout)

    show = hyperfleet("show", *common, "--exp-key", key, pruned[0]["tid"])
    assert f"pruned at epoch {pruned[0]['pruned']} by asha" in show.stdout.splitlines()[0]

    again = hyperfleet(
        "search", "epochs", *common, "--exp-key", key, "--spaces", SPACES,
        "--max-evals", "12", "--set", "epochs=9", "--set", "sleep=0.0", "--prune", "median",
    )  # fmt: skip
    assert again.returncode != 0 and "pruning" in again.stderr
    assert "Traceback" not in again.stderr


def test_bad_pruning_options_are_one_line(server: EmbeddedServer, db_name: str) -> None:
    common = ["--mongo", server.uri, "--db", db_name, "--max-evals", "1"]
    no_epochs = hyperfleet("search", "quadratic", *common, "--prune", "hyperband", env=cli_env())
    assert no_epochs.returncode != 0 and "--prune-max-epochs" in no_epochs.stderr
    assert "Traceback" not in no_epochs.stderr
    bad = hyperfleet("search", "quadratic", *common, "--prune", "often")
    assert bad.returncode != 0 and "often" in bad.stderr and "Traceback" not in bad.stderr


def test_pruning_a_space_without_epochs_warns(server: EmbeddedServer, db_name: str) -> None:
    """quadratic reports no epochs: --prune is accepted (an objective may report epochs
    itself) but says that nothing without per-epoch metrics can be pruned."""
    key = "prune-no-epochs"
    common = ["--mongo", server.uri, "--db", db_name, "--exp-key", key]
    worker = start_worker(server.uri, db_name, "--exp-key", key, "--idle-timeout", "60")
    try:
        out = hyperfleet("search", "quadratic", *common, "--max-evals", "2", "--prune", "median")
    finally:
        stop_all([worker])
    assert out.returncode == 0, out.stderr
    assert "space 'quadratic' has no epochs setting" in out.stderr


def test_trials_pruned_for_nan_show_as_pruned(server: EmbeddedServer, db_name: str) -> None:
    """Issue 22, item 9: trials stopped because their metric was NaN used to end as failures
    with no pruned record: status said '8 pruned of 16' done and top listed fewer rows."""
    key = "pruned-nan"
    common = ["--mongo", server.uri, "--db", db_name]
    worker = start_worker(
        server.uri, db_name, "--exp-key", key, "--spaces", SPACES, "--idle-timeout", "60"
    )
    try:
        search = hyperfleet(
            "search", "nan_epochs", *common, "--exp-key", key, "--spaces", SPACES,
            "--max-evals", "10", "--prune", "asha", "--no-progress", "--seed", "5",
            "--algo", "rand", timeout=300,
        )  # fmt: skip
    finally:
        stop_all([worker])
    assert search.returncode == 0, search.stderr
    rows = list(csv.DictReader(io.StringIO(hyperfleet("export", *common, "--exp-key", key).stdout)))
    stopped = [r for r in rows if r.get("result.stopped_early") == "True"]
    assert stopped and all(r["pruned"] for r in stopped), rows
    assert all(r["state"] == "done" and r["status"] == "ok" for r in rows)
    status = hyperfleet("status", *common, "--exp-key", key).stdout
    assert f"pruned    {len(stopped)} of the 10 done trials" in status, status
    top = hyperfleet("top", *common, "--exp-key", key, "-n", "10").stdout
    assert len([line for line in top.splitlines()[1:] if line.strip()]) == 10, top
