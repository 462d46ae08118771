"""Inspection and the dashboard import neither hyperopt nor scipy (a second of start-up on a
small machine): checked in a fresh process, as ``--help`` is in test_cli_options. The time
itself is measured, not asserted: ``python bench/status_time.py`` prints the median of 5."""

from __future__ import annotations

from tests.conftest import modules_loaded_after

SEARCH_LIBS = ("hyperopt", "scipy")


def _loaded_after(body: str) -> list[str]:
    """Run ``body`` in a fresh interpreter; the top-level modules of SEARCH_LIBS it loaded."""
    return modules_loaded_after(body, SEARCH_LIBS)[0]


def test_status_on_an_empty_database_imports_no_search_library(server, db_name: str) -> None:
    loaded = _loaded_after(f"""
        from coordinator.cli import main
        try:
            main(["status", "--mongo", {server.uri!r}, "--db", {db_name!r}], prog_name="hyperfleet")
        except SystemExit as e:
            assert e.code in (0, None), e.code
    """)
    assert loaded == [], f"`hyperfleet status` imported {loaded}"


def test_the_dashboard_app_imports_no_search_library() -> None:
    loaded = _loaded_after("""
        import coordinator.dashboard.app
        import coordinator.dashboard.serve
        import coordinator.inspect
    """)
    assert loaded == [], f"the dashboard's modules imported {loaded}"
