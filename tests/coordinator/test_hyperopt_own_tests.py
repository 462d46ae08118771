"""Issue 19: hyperopt 0.3.0's own MongoTrials tests (``hyperopt/tests/integration/
test_mongoexp.py``, shipped in its wheel) pass, unchanged, with hyperfleet's classes in place of
hyperopt's.

The file runs in its own pytest process, straight from site-packages, with two helpers from
``tests/hyperopt_compat/``: a stand-in ``mongod`` first on PATH (the file's ``TempMongo`` starts
``mongod --dbpath=DIR --port=22334``; the stand-in starts the embedded SecantusDB server there)
and the plugin ``hyperfleet_in_hyperopt`` (``-p``), which makes ``hyperopt.mongoexp.MongoTrials``
:class:`~coordinator.trials.HyperfleetTrials` and ``MongoJobs``
:class:`~coordinator.hyperopt_jobs.HyperoptJobs` before the file is imported. Before the adapter,
``test_main_worker`` failed with a TypeError, and ``test_trial_attachments`` and
``TestExperimentWithThreads::test_seeds_AAB`` hung forever: hence a hard timeout from outside
(``pytest-timeout`` is not installed, so the file's own ``timeout`` mark does nothing).

hyperopt's file fixes the port (22334) and the data folder (``/tmp/hyperopt_test``, removed at
each exit): a lock file keeps two runs on one machine (other engineers, other checkouts) apart.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hyperopt

from tests.conftest import ROOT

HELPERS = ROOT / "tests" / "hyperopt_compat"
HYPEROPT_FILE = Path(hyperopt.__file__).parent / "tests" / "integration" / "test_mongoexp.py"
#: fixed by hyperopt's file (``TempMongo``, ``test_main_worker``)
HYPEROPT_PORT = 22334
HYPEROPT_WORKDIR = Path("/tmp/hyperopt_test")
LOCK = Path("/tmp/hyperfleet-hyperopt-own-tests.lock")
#: the whole file takes ~20 s on a quiet 2-core machine; a hang is killed after this
RUN_TIMEOUT_S = 240
EXPECTED_TESTS = 12


@contextmanager
def one_run_at_a_time(wait_s: float = 300) -> Iterator[None]:
    with open(LOCK, "a") as lock:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, f"another run held {LOCK} for {wait_s} s"
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


class HyperoptRunHung(AssertionError):
    """hyperopt's file did not finish within ``RUN_TIMEOUT_S``."""


def run_hyperopt_file(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """hyperopt's file in its own pytest process (its own session, killed whole on timeout);
    the run's junit report."""
    config = tmp_path / "pytest.ini"
    config.write_text("[pytest]\n")  # none of hyperfleet's options (markers, addopts)
    report = tmp_path / "report.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERFLEET_")}
    env["PATH"] = os.pathsep.join([str(HELPERS), str(Path(sys.executable).parent), env["PATH"]])
    env["PYTHONPATH"] = os.pathsep.join([str(HELPERS), str(ROOT)])
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(config),
        "-p",
        "hyperfleet_in_hyperopt",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        "-v",
        # a hang prints every thread's stack (what it waits on) before the outer limit kills it
        "-o",
        f"faulthandler_timeout={RUN_TIMEOUT_S - 40}",
        str(HYPEROPT_FILE),
    ]
    # its MongoWorkers make their work folders in the current directory: tmp_path
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the stand-in mongod and its server die with it
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise HyperoptRunHung(
            f"hyperopt's test_mongoexp.py still running after {RUN_TIMEOUT_S} s (a hang); "
            f"its output ended with:\n{out[-12000:]}"
        ) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out), report


def test_hyperopt_own_mongoexp_tests_pass_with_our_classes(tmp_path: Path) -> None:
    assert HYPEROPT_FILE.is_file(), f"hyperopt {hyperopt.__version__} ships no {HYPEROPT_FILE}"
    assert os.access(HELPERS / "mongod", os.X_OK), "tests/hyperopt_compat/mongod lost its x bit"
    with one_run_at_a_time():
        assert port_free(HYPEROPT_PORT), (
            f"port {HYPEROPT_PORT} (fixed by hyperopt's test file) is taken: a server left "
            "over from a killed run? hyperopt's tests would talk to it"
        )
        shutil.rmtree(HYPEROPT_WORKDIR, ignore_errors=True)  # a killed run's data
        try:
            run, report = run_hyperopt_file(tmp_path)
        except HyperoptRunHung as hang:
            # known, not understood: in 2 of ~10 full-suite runs on a loaded 2-core machine,
            # TestExperimentWithThreads::test_seeds_AAB hung (it never did alone, or in 10 runs
            # under synthetic load). Its stacks are printed; a second hang fails the test.
            print(f"first run hung; running hyperopt's file once more. {hang}")
            shutil.rmtree(HYPEROPT_WORKDIR, ignore_errors=True)
            again = tmp_path / "again"
            again.mkdir()
            run, report = run_hyperopt_file(again)
        finally:
            shutil.rmtree(HYPEROPT_WORKDIR, ignore_errors=True)
    tail = run.stdout[-8000:]
    assert report.exists(), f"no report from hyperopt's file (exit {run.returncode}):\n{tail}"
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": EXPECTED_TESTS, "failures": 0, "errors": 0, "skipped": 0}, tail
    assert run.returncode == 0, tail
