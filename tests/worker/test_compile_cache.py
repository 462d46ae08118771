"""``--compile-cache`` (worker/compile_cache.py): JAX's persistent compilation cache is on by
default on the JAX backend, in a 0700 folder per user and machine, and a folder that someone
else owns or can write to is refused with one line (a compiled program put there would run in
every trial). Real folders; the end-to-end check (a JAX worker filling the cache) is
tests/worker/test_keras_workers.py::test_jax_backend_search."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

from worker.compile_cache import MAX_BYTES, apply, default_dir, keras_backend, resolve


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "KERAS_HOME": str(tmp_path / "keras"), **extra}


def test_auto_is_a_private_folder_per_machine_on_jax_and_nothing_elsewhere(tmp_path: Path) -> None:
    path, why = resolve(None, _env(tmp_path, KERAS_BACKEND="jax"))
    assert why is None and path is not None
    assert path.parent == tmp_path / "xdg" / "hyperfleet" / "jax"
    assert path.name == socket.gethostname()[:64] or "_" in path.name  # the machine's name
    assert path.is_dir() and path.stat().st_mode & 0o777 == 0o700
    assert resolve("auto", _env(tmp_path, KERAS_BACKEND="tensorflow")) == (None, None)
    assert resolve(None, _env(tmp_path)) == (None, None)  # Keras's default: TensorFlow
    # the user's own JAX setting wins
    assert resolve(None, _env(tmp_path, KERAS_BACKEND="jax", JAX_COMPILATION_CACHE_DIR="/x")) == (
        None,
        None,
    )
    for off in ("off", "none", "OFF"):
        assert resolve(off, _env(tmp_path, KERAS_BACKEND="jax")) == (None, None)


def test_the_backend_is_read_from_keras_json_too(tmp_path: Path) -> None:
    (tmp_path / "keras").mkdir()
    (tmp_path / "keras" / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert keras_backend(_env(tmp_path)) == "jax"
    assert resolve(None, _env(tmp_path))[0] == default_dir(_env(tmp_path))
    for junk in ("{not json", "[1, 2]", json.dumps({"backend": 3})):
        (tmp_path / "keras" / "keras.json").write_text(junk)
        assert keras_backend(_env(tmp_path)) == "tensorflow"


def test_a_folder_others_can_write_to_is_refused_in_one_line(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    path, why = resolve(str(shared), _env(tmp_path))
    assert path is None and why is not None and "\n" not in why
    assert "others can write to it (mode 777)" in why and "--compile-cache off" in why
    shared.chmod(0o700)
    assert resolve(str(shared), _env(tmp_path)) == (shared, None)


def test_a_folder_someone_else_owns_is_refused(tmp_path: Path) -> None:
    if os.getuid() == 0:  # root (CI here): a user's folder, which the user could fill
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
    else:
        theirs = Path("/usr")
    path, why = resolve(str(theirs), {})
    assert path is None and why is not None and "is not yours" in why


def test_a_folder_that_cannot_be_made_is_one_line_and_no_cache(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    path, why = resolve(str(a_file / "cache"), _env(tmp_path))
    assert path is None and why is not None and "\n" not in why
    assert why.startswith(f"--compile-cache {a_file / 'cache'}: ")


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
