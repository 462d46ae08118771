"""Issue 22, item 5: every string from the database is bounded where it is printed or logged
(one document with a 1 MB exp key made `status` print 1,006,268 bytes and every worker log a
1,000,314-character line). One helper, :func:`coordinator.shown.shown`, does it everywhere."""

from __future__ import annotations

import logging

from click.testing import CliRunner

from coordinator.cli import main
from coordinator.shown import LOGGED_CHARS, SHOWN_CHARS, BoundedLogValues, shown
from tests.raw_store import insert_raw_documents, insert_raw_rows

MB = 1_000_000


def test_shown_cuts_escapes_and_says_how_long() -> None:
    assert shown("K" * MB, bare=True) == "K" * SHOWN_CHARS + f"…({MB} characters)"
    assert shown("K" * MB).startswith("'KKK") and shown("K" * MB).endswith(f"…({MB} characters)")
    assert shown("ab") == "'ab'" and shown("ab", bare=True) == "ab" and shown(7) == "7"
    assert shown("x\n2026-01-01 ERROR forged", bare=True) == "x\\n2026-01-01 ERROR forged"
    assert shown("\u202eevil\x00", bare=True) == "\\u202eevil\\x00"  # no direction override
    assert len(shown(list(range(20_000)))) <= SHOWN_CHARS + 30
    assert shown("x" * SHOWN_CHARS, bare=True) == "x" * SHOWN_CHARS  # the bound itself: whole


def test_log_values_are_bounded_whichever_module_logs(caplog) -> None:
    """The log handler's filter bounds every value, so a module that logs a database value
    without :func:`shown` (here any logger) cannot flood a log either."""
    handler = logging.StreamHandler()
    handler.addFilter(BoundedLogValues())
    record = logging.LogRecord(
        "x", logging.INFO, "f", 1, "trial %s of %r (%d)", ("T", "K" * MB, 3), None
    )
    assert handler.filter(record)
    line = record.getMessage()
    assert line.startswith("trial T of 'KKK") and line.endswith("characters)' (3)")
    assert len(line) < LOGGED_CHARS + 60
    fstring = logging.LogRecord("x", logging.INFO, "f", 1, "key " + "K" * MB, None, None)
    assert handler.filter(fstring) and len(fstring.getMessage()) < 4 * LOGGED_CHARS + 30


def test_status_and_workers_bound_a_1_mb_key(server, db_name, store) -> None:
    tid = 12345
    misc = {"tid": tid, "cmd": None, "idxs": {"x": [tid]}, "vals": {"x": [0.25]}}
    insert_raw_documents(
        store,
        [{"tid": tid, "state": 0, "exp_key": "K" * MB, "space": "quadratic", "misc": misc}],
    )
    insert_raw_rows(
        store, "experiments", [{"_id": "E" * MB, "space": "S" * MB, "status": "S" * MB}]
    )
    row = {"_id": "W" * MB, "id": "W" * MB, "host": "H" * MB, "state": "running"}
    insert_raw_rows(store, "workers", [{**row, "exp_key": "K" * MB, "current_tid": "T" * MB}])
    common = ["--mongo", server.uri, "--db", db_name]
    for args in (["status"], ["workers", "--all"], ["status", "--exp-key", "nope"]):
        result = CliRunner().invoke(main, [*args, *common])
        assert result.exit_code == (2 if "nope" in args else 0), result.output[:300]
        assert len(result.output) < 2_000, (args, len(result.output))  # status: 3 MB before


def test_best_evaluate_bounds_an_unknown_space_read_from_the_experiment(
    server, db_name, store
) -> None:
    """`best --evaluate` names the experiment's space and its recorded --spaces, both read
    from the database."""
    exp = {"_id": "big", "space": "S" * MB, "spaces_source": "P" * MB, "status": "done"}
    insert_raw_rows(store, "experiments", [exp])
    args = ["best", "--mongo", server.uri, "--db", db_name, "--exp-key", "big", "--evaluate"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "needs search space 'SSS" in result.output, result.output[:300]
    assert len(result.output) < 1_000, len(result.output)  # 2 MB before


def test_a_rerun_mismatch_bounds_what_the_stored_experiment_says(server, db_name, store) -> None:
    """A search refused because the exp key holds another search names what the stored
    document says (its space, settings): a megabyte there made a megabyte line."""
    insert_raw_rows(store, "experiments", [{"_id": "q", "space": "S" * MB, "status": "done"}])
    args = ["search", "quadratic", "--mongo", server.uri, "--db", db_name, "--exp-key", "q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "already holds a search with" in result.output, result.output
    assert f"…({MB} characters)" in result.output and len(result.output) < 2_000


def test_a_busy_experiment_bounds_the_stored_coordinator() -> None:
    from coordinator.experiment_lease import describe

    text = describe({"host": "H" * MB, "pid": "P" * MB})
    assert text.startswith("host HHH") and len(text) < 250, len(text)


def test_an_unknown_space_name_from_the_database_is_bounded() -> None:
    """Workers, `best` and warm-up look up the space a trial or experiment names."""
    import pytest

    from coordinator.errors import SpaceError
    from search_spaces import get_space

    with pytest.raises(SpaceError, match="unknown search space 'SSS") as caught:
        get_space("S" * MB)
    assert len(str(caught.value)) < 2_000
