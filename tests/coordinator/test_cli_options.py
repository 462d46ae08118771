"""The CLI's shared options (coordinator/cli/options.py): the one GPU-list parser, the
HYPERFLEET_EXP_KEY variable on every command that takes --exp-key, and a --help that imports
nothing heavy."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from coordinator.cli import main
from coordinator.cli.options import parse_gpu_ids
from coordinator.errors import ConfigError
from tests.conftest import cli_env, hyperfleet, modules_loaded_after

GPU_LISTS = [
    (None, None),
    ("0", ["0"]),
    ("0,1, 2 ,3", ["0", "1", "2", "3"]),
    (" 7 ", ["7"]),
    ("01,2", ["1", "2"]),
    ("none", []),
    ("NONE", []),
    ("cpu", []),
    ("-1", []),
    ("", []),
    ("  ", []),
]


@pytest.mark.parametrize(("value", "ids"), GPU_LISTS, ids=[repr(v) for v, _ in GPU_LISTS])
def test_gpu_list(value: str | None, ids: list[str] | None) -> None:
    assert parse_gpu_ids(value) == ids


BAD_GPU_LISTS = [
    ("x1", "expected GPU ids"),
    ("0,gpu1", "expected GPU ids"),
    ("0,,1", "expected GPU ids"),
    ("0,", "expected GPU ids"),
    ("-2", "expected GPU ids"),
    ("0,-1", "expected GPU ids"),
    ("1.5", "expected GPU ids"),
    ("0 1", "expected GPU ids"),
    ("²", "expected GPU ids"),  # a digit to str.isdigit, not a GPU id
    ("1,1", "GPU 1 is listed twice"),
    ("2,0,02", "GPU 2 is listed twice"),
]


@pytest.mark.parametrize(("value", "message"), BAD_GPU_LISTS, ids=[v for v, _ in BAD_GPU_LISTS])
def test_bad_gpu_list_is_one_line_naming_the_option(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_gpu_ids(value, "--gpu")
    text = str(caught.value)
    assert text.startswith(f"--gpu {value!r}: ") and "\n" not in text


def test_gpu_options_use_the_one_parser() -> None:
    """worker --gpu, local --gpus and launch --gpus all answer with the same rule and line."""
    runner = CliRunner()
    for argv in (
        ["worker", "--mongo", "mongodb://127.0.0.1:9/", "--gpu", "3,3"],
        ["local", "quadratic", "--gpus", "3,3"],
        ["launch", "--gpus", "3,3", "--mongo", "mongodb://db.example.org/"],
    ):
        out = runner.invoke(main, argv, catch_exceptions=False)
        assert out.exit_code == 2, out.output
        assert out.stderr.strip().endswith("'3,3': GPU 3 is listed twice; list each GPU once "
                                           "(--per-gpu runs several workers on one)")  # fmt: skip


def test_local_gpus_none_is_refused() -> None:
    out = CliRunner().invoke(main, ["local", "quadratic", "--gpus", "none"])
    assert out.exit_code == 2
    assert out.stderr.strip() == "Error: --gpus none: leave --gpus out for CPU workers"


def _fake_nvidia_smi(tmp_path: Path, gpus: int) -> dict[str, str]:
    """A stand-in ``nvidia-smi`` on PATH (a fake: these machines have no GPU and no driver)
    that lists ``gpus`` GPUs the way ``nvidia-smi -L`` does."""
    lines = "".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08d})\\n" for i in range(gpus))
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nprintf '{lines}'\n")
    fake.chmod(0o755)
    return {"PATH": f"{tmp_path}:{os.environ['PATH']}"}


def test_local_gpus_the_machine_lacks_are_refused(tmp_path: Path) -> None:
    """A worker pinned to a GPU that does not exist trains on the CPU without a word."""
    env = _fake_nvidia_smi(tmp_path, 2)
    argv = ["local", "quadratic", "--gpus", "0,3", "--db-path", str(tmp_path / "db")]
    out = CliRunner().invoke(main, argv, env=env)
    assert out.exit_code == 2, out.output
    assert out.stderr.strip() == (
        "Error: --gpus 0,3: this machine has 2 GPUs (ids 0 to 1, see nvidia-smi -L); "
        "there is no GPU 3"
    )
    assert not list((tmp_path / "db").glob("WiredTiger*"))  # refused before the server started
    worker = CliRunner().invoke(
        main, ["worker", "--mongo", "mongodb://127.0.0.1:9/", "--gpu", "2"], env=env
    )
    assert worker.exit_code == 2 and "--gpu 2: this machine has 2 GPUs" in worker.stderr


def test_check_gpu_ids_accepts_listed_gpus_and_warns_without_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.environment import check_gpu_ids

    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path, 2)["PATH"])
    check_gpu_ids(["1", "0"])  # both exist: no error, no warning
    assert not caplog.records
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-smi at all
    check_gpu_ids(["0"])
    assert "cannot check the GPU ids" in caplog.text and "trains on the CPU" in caplog.text


def _commands_with(param_name: str) -> dict[str, click.Command]:
    return {
        name: cmd
        for name, cmd in main.commands.items()
        if any(p.name == param_name for p in cmd.params)
    }


def test_every_exp_key_option_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = _commands_with("exp_key")
    assert set(commands) == {
        "worker", "search", "local", "reap", "cancel", "status", "top", "show", "export", "plot",
        "best", "launch", "importance",
    }  # fmt: skip
    monkeypatch.setenv("HYPERFLEET_EXP_KEY", "from-env")
    monkeypatch.setenv("HYPERFLEET_MONGO", "mongodb://127.0.0.1:9/")
    for name, cmd in commands.items():
        (exp_key,) = (p for p in cmd.params if p.name == "exp_key")
        assert exp_key.envvar == "HYPERFLEET_EXP_KEY", name
        assert "[env: HYPERFLEET_EXP_KEY]" in (exp_key.help or ""), name
        required = {
            "space_name": ["SPACE"],
            "tid": ["1"],
            "tid_text": ["1"],
            "out_dir": ["-o", "plots"],
        }
        args = [a for p in cmd.params for a in required.get(p.name or "", [])]
        with cmd.make_context(name, list(args), parent=click.Context(main)) as ctx:
            assert ctx.params["exp_key"] == "from-env", name
        # the command line still wins over the environment
        with cmd.make_context(
            name, [*args, "--exp-key", "argv"], parent=click.Context(main)
        ) as ctx:
            assert ctx.params["exp_key"] == "argv", name


def test_required_exp_key_may_come_from_the_environment(
    server, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = cli_env(HYPERFLEET_MONGO=server.uri, HYPERFLEET_DB=db_name)
    out = hyperfleet("cancel", env=env, timeout=30)
    assert out.returncode == 2 and "Missing option '--exp-key'" in out.stderr
    out = hyperfleet("cancel", env={**env, "HYPERFLEET_EXP_KEY": "from-env"}, timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"Error: no experiment 'from-env' in database '{db_name}' "
        "(the database holds no experiments)"
    )


HEAVY = ("hyperopt", "scipy", "pymongo", "bson", "numpy", "tensorflow", "keras", "jax", "docker")


def test_help_imports_nothing_heavy() -> None:
    """`hyperfleet --help` and every `hyperfleet CMD --help` build without hyperopt, pymongo,
    numpy or a framework (that is what keeps them well under 0.5 s)."""
    loaded, stdout = modules_loaded_after(
        """
        from coordinator.cli import main
        for argv in [[], *([name] for name in sorted(main.commands))]:
            try:
                main([*argv, "--help"], prog_name="hyperfleet")
            except SystemExit as e:
                assert e.code == 0, (argv, e.code)
        """,
        HEAVY,
    )
    assert loaded == [], loaded
    assert "Usage: hyperfleet launch" in stdout and "Commands:" in stdout


@pytest.mark.parametrize(
    "bad",
    [
        ["--set", "bound=1e99"],  # issue 22, item 12: accepted, losses of 2.5e197
        ["--set", "bound=-2e15"],
        ["--set", "nothere=1"],
        ["--max-evals", "0"],
    ],
)
def test_refused_runs_leave_no_db_path_and_say_one_line(tmp_path: Path, bad: list[str]) -> None:
    """Issue 22, item 12: a run refused for its input created the --db-path folder anyway."""
    db_path = tmp_path / "not" / "yet" / "db"
    out = hyperfleet("local", "quadratic", "--db-path", str(db_path), *bad, cwd=tmp_path)
    assert out.returncode != 0, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 3, out.stderr
    assert not (tmp_path / "not").exists()
    if "bound=1e99" in bad:
        assert "out of range" in out.stderr and "1e+15" in out.stderr


def test_an_unwritable_db_path_parent_is_refused_before_anything(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = hyperfleet("local", "quadratic", "--db-path", str(locked / "db"), cwd=tmp_path)
    finally:
        locked.chmod(0o700)
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    assert out.returncode != 0 and "--db-path" in out.stderr and "Traceback" not in out.stderr
    assert not (locked / "db").exists()
