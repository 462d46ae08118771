"""A quiet console (issue 23): TensorFlow's, absl's and oneDNN's start-up banners are filtered
from stderr in every command (and the workers they start) unless ``--verbose``; errors pass."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from coordinator.quiet import drop_noise
from tests.conftest import ROOT, cli_env

BANNERS = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796554403.798336   20830 port.cc:153] oneDNN custom operations are on.\n"
    b"I0000 00:00:1796554417.134251   21424 cpu_feature_guard.cc:227] This TensorFlow binary\n"
    b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild\n"
    b"W0000 00:00:1796554417.134251   21424 gpu_device.cc:2344] Cannot dlopen some GPU libraries\n"
    b"E0000 00:00:1796554417.1   21424 cuda_dnn.cc:8310] Unable to register cuDNN factory: x\n"
)
ERRORS = (
    b"E0000 00:00:1796554417.2   21424 op_kernel.cc:1830] OP_REQUIRES failed: out of memory\n"
    b"Traceback (most recent call last):\n"
    b'  File "x.py", line 1, in <module>\n'
    b"ValueError: a real error\n"
)


def test_banners_are_dropped_and_errors_kept() -> None:
    assert drop_noise(BANNERS + ERRORS) == ERRORS


def run_python(body: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        cwd=ROOT,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_stderr_written_while_a_framework_imports_is_filtered_not_lost() -> None:
    out = run_python(
        """
        import os
        from coordinator.quiet import filtered_stderr
        try:
            with filtered_stderr():
                os.write(2, b"I0000 00:00:17.5   12 port.cc:153] oneDNN custom operations\\n")
                os.write(2, b"E0000 00:00:17.6   12 kernel.cc:9] a real C++ error\\n")
                raise ImportError("the framework is broken")
        except ImportError as e:
            print("caught", e)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == "E0000 00:00:17.6   12 kernel.cc:9] a real C++ error\n"


CLI_THEN_TENSORFLOW = """
    import sys
    from coordinator.cli import main
    try:
        main(["{flag}status", "--help"], standalone_mode=False)  # the group sets up the console
    except SystemExit:
        pass
    import tensorflow
    print("after import", file=sys.stderr)
"""


def test_a_command_that_imports_tensorflow_prints_no_banner() -> None:
    pytest.importorskip("tensorflow")
    out = run_python(CLI_THEN_TENSORFLOW.format(flag=""))
    assert out.returncode == 0, out.stderr
    assert out.stderr == "after import\n"


def test_verbose_keeps_the_banners() -> None:
    pytest.importorskip("tensorflow")
    out = run_python(CLI_THEN_TENSORFLOW.format(flag='--verbose", "'))
    assert out.returncode == 0, out.stderr
    assert "oneDNN custom operations" in out.stderr
