"""Issue 10, "own spaces as hyperopt users write them": a ``SearchSpace`` given the hyperopt space
itself (not a ``build`` function) and an objective of the params only works end to end; malformed
ones are refused with one line when their file is loaded; docs/spaces.md's example loads and
runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hyperopt import hp

from coordinator.errors import ConfigError, SpaceError
from coordinator.store import TrialStore
from search_spaces import SearchSpace, get_space, load_spaces, register
from tests.conftest import ROOT, hyperfleet, queue_trials
from worker.evaluate import Resolver, evaluate

DOC = ROOT / "docs" / "spaces.md"


def _plain_objective(params):
    return {"loss": (params["x"] - 0.25) ** 2, "status": "ok"}


PLAIN = register(
    SearchSpace("plain_hyperopt_form", {"x": hp.uniform("x", -1, 1)}, _plain_objective),
    replace=True,
)


def test_a_space_and_a_params_only_objective_run(store: TrialStore) -> None:
    """A dict space and objective(params): the trial finishes DONE (every such trial used to
    end ERROR with a TypeError, and `local` crashed on the dict)."""
    assert PLAIN.hyperopt_space({}) is PLAIN.build and len(PLAIN.fingerprint({})) == 16
    queue_trials(store, 1, exp_key="plain", space=PLAIN.name)
    lease = store.reserve_trial("w-test", exp_key="plain")
    outcome = evaluate(Resolver(store), store, lease, {})
    assert outcome.error is None, outcome.error
    assert outcome.result["status"] == "ok" and set(outcome.params) == {"x"}
    assert outcome.result["loss"] == pytest.approx((outcome.params["x"] - 0.25) ** 2)


BAD = [
    (lambda: SearchSpace("s", {"x": hp.uniform("x", 0, 1)}, lambda: {}), "takes 0 required"),
    (lambda: SearchSpace("s", {"x": hp.uniform("x", 0, 1)}, lambda a, b, c: {}), "takes 3"),
    (lambda: SearchSpace("s", {"x": hp.uniform("x", 0, 1)}, "loss"), "must be a function"),
    (lambda: SearchSpace("s", lambda a, b: {}, _plain_objective), "build must take"),
]


@pytest.mark.parametrize(("make", "message"), BAD, ids=[m for _, m in BAD])
def test_malformed_spaces_are_refused_at_creation(make, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        make()
    assert "\n" not in str(caught.value)


def test_a_malformed_space_file_is_one_line_for_the_cli(tmp_path: Path) -> None:
    """Refused when loaded (`hyperfleet spaces`), in one line, not later inside `local`."""
    bad = tmp_path / "bad_spaces.py"
    bad.write_text(
        "from hyperopt import hp\nfrom search_spaces import SearchSpace\n"
        "s = SearchSpace('three', {'x': hp.uniform('x', 0, 1)}, lambda a, b, c: {})\n"
    )
    result = hyperfleet("spaces", "--spaces", str(bad), timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "takes 3 required arguments" in result.stderr.strip()
    assert len(result.stderr.strip().splitlines()) == 1


def queue_space(store: TrialStore, space: SearchSpace, settings: dict) -> None:
    """One NEW trial of ``space`` queued as fmin queues it (the shared helper samples one x)."""
    from hyperopt import rand
    from hyperopt.base import Domain

    from coordinator.trials import HyperfleetTrials

    store.create_experiment(
        {"_id": space.name, "space": space.name, "settings": settings, "status": "running"}
    )
    trials = HyperfleetTrials(store, exp_key=space.name, space_name=space.name)
    domain = Domain(lambda p: 0.0, space.hyperopt_space(space.resolve_settings(settings)))
    trials.insert_trial_docs(rand.suggest(trials.new_trial_ids(1), domain, trials, 1))


def doc_example(tmp_path: Path) -> Path:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)[1]
    path = tmp_path / "my_spaces.py"
    path.write_text(code)
    return path


def test_the_docs_example_loads_and_both_forms_evaluate(store: TrialStore, tmp_path) -> None:
    """docs/spaces.md's example: both of its spaces load and evaluate a trial."""
    names = {space.name for space in load_spaces(str(doc_example(tmp_path)))}
    assert names == {"rosenbrock", "decay"}
    for name, settings in (("rosenbrock", {}), ("decay", {"width": 2})):
        space = get_space(name)
        queue_space(store, space, settings)
        lease = store.reserve_trial("w-test", exp_key=name)
        outcome = evaluate(Resolver(store), store, lease, {})
        assert outcome.error is None and outcome.result["status"] == "ok", (name, outcome.error)
    assert store.get_trial("decay", lease.tid)["epochs"], "the decay objective reports epochs"


@pytest.mark.slow  # ~20 s: a whole `local` run; the fast tests above cover the same code
def test_local_runs_the_docs_plain_space(tmp_path) -> None:
    """`hyperfleet local` with the doc's plain-hyperopt space: server, worker, search, done
    (it used to crash with a traceback after starting the server and the workers)."""
    spaces = doc_example(tmp_path)
    result = hyperfleet(
        "local", "rosenbrock", "--spaces", str(spaces), "--workers", "1", "--max-evals", "3",
        "--db-path", str(tmp_path / "db"), "--no-progress", cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"done 3\b", result.stdout) and "Traceback" not in result.stderr


def test_unknown_space_is_still_a_space_error() -> None:
    with pytest.raises(SpaceError, match="add yours with --spaces PATH"):
        get_space("no_such_space_here")
