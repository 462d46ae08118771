"""``hyperfleet local`` interrupted with Ctrl-C, and spaces from the entry-point group."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import connect
from tests.conftest import cli_env, hyperfleet, wait_for


def test_local_ctrl_c_stops_cleanly_and_rerun_continues(tmp_path: Path) -> None:
    args = [
        "local",
        "quadratic",
        "--workers",
        "2",
        "--max-evals",
        "12",
        "--exp-key",
        "ctrlc",
        "--set",
        "sleep=0.5",
        "--db-path",
        str(tmp_path / "db"),
        "--no-progress",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    head = ""
    while "embedded server ready at" not in head:
        line = proc.stderr.readline()
        assert line, f"local exited early: {head}"
        head += line
    uri = re.search(r"ready at (mongodb://\S+)", head)[1]
    wait_for(lambda: connect(uri).count("ctrlc", [TrialState.DONE]) >= 1, 60, what="a trial")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "interrupted; finished trials are kept" in err and "--exp-key ctrlc" in err
    assert "Traceback" not in err
    # everything stopped: the db path is free again, and no trial is left RUNNING
    with EmbeddedServer(tmp_path / "db") as srv:
        counts = connect(srv.uri).count_by_state("ctrlc")
        assert counts[TrialState.RUNNING] == 0
        done_before = counts[TrialState.DONE]
        assert done_before >= 1
    rerun = hyperfleet(*args, cwd=tmp_path, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert re.search(r"experiment ctrlc: done 12 ", rerun.stdout)


def test_spaces_from_entry_point_group(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "hf_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "hf_plugin.py").write_text(
        textwrap.dedent("""
        from hyperopt import hp
        from search_spaces import SearchSpace, Setting

        plugin_space = SearchSpace(
            "plugin_cubic", lambda s: {"x": hp.uniform("x", -2, 2)},
            lambda p, ctx: {"loss": abs(p["x"]) ** 3, "status": "ok"},
            (Setting("scale", 1, "an int setting", int, min=1),), "a space from a plugin")
    """)
    )
    (site / "hf_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hf-plugin\nVersion: 0.1\n"
    )
    (site / "hf_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[hyperfleet.search_spaces]\ncubic = hf_plugin:plugin_space\n"
    )
    out = hyperfleet("spaces", env=cli_env(PYTHONPATH=str(site)))
    assert out.returncode == 0, out.stderr
    assert "plugin_cubic: a space from a plugin  [entry point hf_plugin:plugin_space]" in out.stdout
    assert "--set scale=1 [int]" in out.stdout
