"""``hyperfleet local`` interrupted with Ctrl-C, and spaces from the entry-point group."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import connect
from tests.conftest import cli_env, hyperfleet, process_gone, wait_for


def _start_local(
    tmp_path: Path, args: list[str], stderr: Any = subprocess.PIPE
) -> subprocess.Popen:
    """``hyperfleet local ARGS`` in its own process group (as a terminal's foreground job)."""
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE if stderr is subprocess.PIPE else subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        env=cli_env(),
        start_new_session=True,
    )


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
    proc = _start_local(tmp_path, args)
    head = ""
    while "embedded server ready at" not in head:
        line = proc.stderr.readline()
        assert line, f"local exited early: {head}"
        head += line
    uri = re.search(r"ready at (mongodb://\S+)", head)[1]
    wait_for(lambda: connect(uri).count("ctrlc", [TrialState.DONE]) >= 1, 60, what="a trial")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "interrupted; finished trials are kept" in err and "--exp-key ctrlc" in err
    assert "Traceback" not in err
    # the workers (their own session: the terminal's SIGINT does not reach them) were asked
    # once, so they finished their running trials instead of handing them back
    assert "finish their running trials first" in err and "handing" not in err
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("ctrlc-worker-*.log"))
    assert "handing trial" not in logs and "stopped by signal" in logs
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


def _workers_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"worker" in cmdline:
                found.append(int(child))
    return found


def test_local_replaces_a_worker_that_dies(tmp_path: Path) -> None:
    """`local` is its workers' parent: one SIGKILLed mid-search is replaced at once (before,
    the search went on one worker short, and said nothing)."""
    args = ["local", "quadratic", "--workers", "2", "--max-evals", "16", "--exp-key", "rw"]
    args += ["--set", "sleep=0.5", "--db-path", str(tmp_path / "db"), "--no-progress"]
    proc = _start_local(tmp_path, args)
    try:
        pids = wait_for(lambda: len(_workers_of(proc.pid)) == 2 and _workers_of(proc.pid), 60)
        os.kill(pids[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    found = re.search(rf"worker (\d) \(pid {pids[0]}\) killed by SIGKILL.*starting a new one", err)
    assert found, err
    assert re.search(r"experiment rw: done 16 ", out)
    # the replacement (same slot, same log file: a new pid) started and ran trials
    log = (tmp_path / "logs" / f"rw-worker-{found[1]}.log").read_text()
    started = {int(pid) for pid in re.findall(r"worker \S+?:(\d+):\w+ started", log)}
    assert started - {pids[0]}, log
    assert re.search(r"tid \d+: ok", log), log


def _local_with_a_long_trial(tmp_path: Path) -> tuple[subprocess.Popen, Path, str]:
    args = ["local", "quadratic", "--workers", "1", "--max-evals", "2", "--exp-key", "long"]
    args += ["--set", "sleep=60", "--db-path", str(tmp_path / "db"), "--no-progress"]
    err = tmp_path / "local.err"
    proc = _start_local(tmp_path, args, stderr=open(err, "w"))  # noqa: SIM115
    uri = wait_for(lambda: re.search(r"ready at (mongodb://\S+)", err.read_text()), 60)[1]
    wait_for(lambda: connect(uri).count("long", [TrialState.RUNNING]) >= 1, 60, what="a trial")
    return proc, err, uri


def _no_trial_left_running(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "db") as srv:
        counts = connect(srv.uri).count_by_state("long")
    assert counts[TrialState.RUNNING] == 0 and counts[TrialState.NEW] >= 1  # handed back


def test_local_sigterm_hands_running_trials_back_at_once(tmp_path: Path) -> None:
    """SIGTERM (docker stop, systemd) must not wait for a 60 s trial: its grace is ~10 s."""
    proc, err, _ = _local_with_a_long_trial(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(40) == 1, err.read_text()
    assert "finish their running trials" not in err.read_text()
    _no_trial_left_running(tmp_path)


def test_local_second_ctrl_c_hands_running_trials_back(tmp_path: Path) -> None:
    proc, err, _ = _local_with_a_long_trial(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)
    wait_for(lambda: "finish their running trials" in err.read_text(), 30, what="the first")
    assert proc.poll() is None  # waiting for the 60 s trial to finish
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(40) == 1, err.read_text()
    assert "handing the running trials back now" in err.read_text()
    assert "Traceback" not in err.read_text()
    _no_trial_left_running(tmp_path)


def test_local_refuses_other_settings_before_starting_workers(tmp_path: Path) -> None:
    """A rerun with other settings was refused only after the workers had started (7 s)."""
    args = ["local", "quadratic", "--workers", "1", "--max-evals", "1", "--exp-key", "mm"]
    args += ["--set", "sleep=0", "--db-path", str(tmp_path / "db"), "--no-progress"]
    first = hyperfleet(*args, cwd=tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr
    again = hyperfleet(*args, "--set", "bound=2", cwd=tmp_path, timeout=120)
    assert again.returncode == 1 and "already holds a search with" in again.stderr
    assert "started 1 worker" not in again.stderr, again.stderr
    # new-user review: "experiment mm: 1 worker ..." came first and read as a start
    assert "experiment mm:" in first.stderr and "experiment mm:" not in again.stderr


def test_local_rerun_releases_its_dead_workers_trials_at_once(tmp_path: Path) -> None:
    """Issue 22, item 12: a ``local`` killed with SIGKILL takes its workers along; their trials
    stayed RUNNING and a rerun waited out their whole lease (30 s) before running them again.
    The rerun knows their pids on this host are gone: it hands them back at once, in one line."""
    args = [
        "local", "quadratic", "--workers", "2", "--max-evals", "4", "--exp-key", "rerun",
        "--set", "sleep=3", "--db-path", str(tmp_path / "db"), "--no-progress",
    ]  # fmt: skip
    proc = _start_local(tmp_path, args)
    head = ""
    while "embedded server ready at" not in head:
        line = proc.stderr.readline()
        assert line, f"local exited early: {head}"
        head += line
    uri = re.search(r"ready at (mongodb://\S+)", head)[1]
    store = connect(uri)
    wait_for(lambda: store.count("rerun", [TrialState.RUNNING]) >= 2, 60, what="running trials")
    pids = {d["worker"]["pid"] for d in store.trials("rerun", [TrialState.RUNNING])}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store.close()
    for pid in pids:  # the workers die with local
        wait_for(lambda pid=pid: process_gone(pid), 30, what=f"worker {pid} to die")
    started = time.monotonic()
    rerun = hyperfleet(*args, cwd=tmp_path, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "running trials of workers of an earlier run that are gone" in rerun.stderr
    assert re.search(r"experiment rerun: done 4 ", rerun.stdout), rerun.stdout
    assert time.monotonic() - started < 25  # not the 30 s lease of the dead workers


def test_local_shows_a_refused_compile_cache_on_the_console(tmp_path: Path) -> None:
    """A JAX cache folder others can write to is refused once, on the console (it was only in
    the workers' log files), and the workers run without it."""
    bad = tmp_path / "xdg" / "hyperfleet" / "jax"
    bad.mkdir(parents=True)
    bad.chmod(0o777)
    args = ["local", "quadratic", "--workers", "1", "--max-evals", "2", "--exp-key", "cc"]
    args += ["--set", "sleep=0", "--db-path", str(tmp_path / "db"), "--no-progress"]
    env = cli_env(KERAS_BACKEND="jax", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    out = hyperfleet(*args, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "--compile-cache" in line]
    assert len(warnings) == 1 and "writable by others" in warnings[0], out.stderr
    logs = "".join(p.read_text() for p in tmp_path.glob("logs/*.log"))
    assert "--compile-cache" not in logs  # the workers were told: off


ALWAYS_FAILS = textwrap.dedent("""
    from hyperopt import hp
    from search_spaces import SearchSpace

    def _objective(params, ctx):
        raise ValueError("this objective always fails")

    always_fails = SearchSpace(
        "always_fails", lambda s: {"x": hp.uniform("x", 0, 1)}, _objective, (), "fails"
    )
""")


def test_status_of_a_search_where_every_trial_failed_says_so(tmp_path: Path) -> None:
    """``[done]`` alone read as a success when every trial had failed."""
    spaces = tmp_path / "failing_spaces.py"
    spaces.write_text(ALWAYS_FAILS)
    args = ["local", "always_fails", "--spaces", str(spaces), "--workers", "1"]
    args += ["--max-evals", "2", "--exp-key", "bad", "--db-path", str(tmp_path / "db")]
    ran = hyperfleet(*args, "--no-progress", cwd=tmp_path, timeout=120)
    assert ran.returncode != 0 or "no successful trial" in ran.stderr + ran.stdout, ran.stderr
    with EmbeddedServer(tmp_path / "db") as srv:
        out = hyperfleet("status", "--mongo", srv.uri, "--exp-key", "bad")
    assert out.returncode == 0, out.stderr
    assert "experiment bad  [done, no trial succeeded]" in out.stdout, out.stdout
    assert "best      - (no successful trial)\n" in out.stdout, out.stdout
