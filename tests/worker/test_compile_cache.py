"""``--compile-cache`` (worker/compile_cache.py): JAX's persistent compilation cache is on by
default on the JAX backend, in a 0700 folder per user and machine. A compiled program found there
runs in every trial, so a folder is refused with one line, and the worker compiles without it,
when it, a folder above it or anything in it is someone else's or writable by others. Real
folders; the end-to-end check (a JAX worker filling the cache) is
tests/worker/test_keras_workers.py::test_jax_backend_search."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

from coordinator.server import EmbeddedServer
from tests.conftest import cli_env, hyperfleet
from worker.compile_cache import MAX_BYTES, apply, default_dir, keras_backend, resolve


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "KERAS_HOME": str(tmp_path / "keras"),
        "KERAS_BACKEND": "jax",
        **extra,
    }


def _refused(value: str, env: dict[str, str]) -> str:
    path, why = resolve(value, env)
    assert path is None and why is not None and "\n" not in why, (path, why)
    assert "HYPERFLEET_COMPILE_CACHE=off" in why  # what to do next
    return why


def test_auto_is_a_private_folder_per_machine_on_jax_only(tmp_path: Path) -> None:
    path, why = resolve(None, _env(tmp_path))
    assert why is None and path is not None
    assert path.parent == tmp_path / "xdg" / "hyperfleet" / "jax"
    assert path.name == socket.gethostname()[:64] or "_" in path.name  # the machine's name
    assert path.is_dir() and path.stat().st_mode & 0o777 == 0o700
    assert resolve("   ", _env(tmp_path)) == (path, None)  # blank is auto, not this folder
    for off in ("off", "none", "OFF"):
        assert resolve(off, _env(tmp_path)) == (None, None)
    # the user's own JAX setting wins
    assert resolve(None, _env(tmp_path, JAX_COMPILATION_CACHE_DIR="/x")) == (None, None)
    # other backends: nothing set, no folder made, even when one is named
    for env in (_env(tmp_path, KERAS_BACKEND="tensorflow"), _env(tmp_path, KERAS_BACKEND="")):
        assert resolve(str(tmp_path / "named"), env) == (None, None)
    assert not (tmp_path / "named").exists()


def test_a_relative_xdg_cache_home_is_ignored(tmp_path: Path) -> None:
    env = _env(tmp_path, XDG_CACHE_HOME="relative/cache")
    assert default_dir(env).is_absolute()
    assert "relative" not in str(default_dir(env))


def test_the_backend_is_read_from_keras_json_and_junk_is_none(tmp_path: Path) -> None:
    env = _env(tmp_path, KERAS_BACKEND="")
    (tmp_path / "keras").mkdir()
    keras_json = tmp_path / "keras" / "keras.json"
    keras_json.write_text(json.dumps({"backend": "jax"}))
    assert keras_backend(env) == "jax"
    assert resolve(None, env)[0] == default_dir(env)
    for junk in ("{not json", "[1, 2]", json.dumps({"backend": 3}), "[" * 100_000):
        keras_json.write_text(junk)
        assert keras_backend(env) == "tensorflow"
    keras_json.unlink()
    os.mkfifo(keras_json)  # reading it would block the worker's start
    assert keras_backend(env) == "tensorflow"


def test_a_folder_others_can_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert "writable by others (mode 777)" in _refused(str(shared), _env(tmp_path))
    shared.chmod(0o700)
    assert resolve(str(shared), _env(tmp_path)) == (shared, None)


def test_a_folder_inside_one_others_can_write_to_is_refused(tmp_path: Path) -> None:
    """Whoever can write to a folder above could swap the cache for theirs after the check."""
    above = tmp_path / "above"
    above.mkdir()
    above.chmod(0o777)
    why = _refused(str(above / "mine"), _env(tmp_path))
    assert f"inside {above}, which is writable by others" in why
    above.chmod(0o1777)  # sticky, like /tmp: others cannot rename what is ours
    assert resolve(str(above / "mine"), _env(tmp_path)) == (above / "mine", None)


def test_a_folder_holding_what_others_could_plant_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "sub").mkdir(parents=True)
    (cache / "sub").chmod(0o777)
    assert "holds sub, a folder others can write to" in _refused(str(cache), _env(tmp_path))
    (cache / "sub").chmod(0o700)
    if os.getuid() == 0:  # root (CI here) can give a file away: a planted program
        (cache / "jit_step-cache").write_text("x")
        os.chown(cache / "jit_step-cache", 65534, 65534)
        assert "owned by uid 65534" in _refused(str(cache), _env(tmp_path))


def test_a_folder_someone_else_owns_is_refused(tmp_path: Path) -> None:
    if os.getuid() == 0:  # root (CI here): a user's folder, which the user could fill
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
    else:
        theirs = Path("/usr")
    assert "owned by uid" in _refused(str(theirs), _env(tmp_path))


def test_bad_paths_are_one_line_and_no_cache(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for bad in (a_file, a_file / "cache", tmp_path / ("x" * 300)):
        assert _refused(str(bad), _env(tmp_path)).startswith(f"--compile-cache {bad}: ")
    assert "only ~ (your own home)" in _refused("~nobody/cache", _env(tmp_path))


def test_a_file_named_off_does_not_break_the_keyword(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    (tmp_path / "off").write_text("a file")
    out = hyperfleet(
        "worker",
        "--mongo",
        server.uri,
        "--check",
        "--compile-cache",
        "off",
        cwd=tmp_path,
        env=cli_env(KERAS_BACKEND="jax", XDG_CACHE_HOME=str(tmp_path / "xdg")),
    )
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "xdg").exists()


def test_apply_points_jax_there_and_keeps_the_users_own_bounds(tmp_path: Path) -> None:
    environ = {"JAX_COMPILATION_CACHE_MAX_SIZE": "1000"}
    apply(tmp_path, environ)
    assert environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path)
    assert environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert environ["JAX_COMPILATION_CACHE_MAX_SIZE"] == "1000"
    fresh: dict[str, str] = {}
    apply(tmp_path, fresh)
    # JAX refuses a bounded cache without filelock (it would cache nothing)
    bounded = importlib.util.find_spec("filelock") is not None
    assert fresh.get("JAX_COMPILATION_CACHE_MAX_SIZE") == (str(MAX_BYTES) if bounded else None)
