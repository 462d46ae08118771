"""JAX's persistent compilation cache for a worker (``--compile-cache``): where it lives, and
whether it is safe to load compiled programs from it.

On the JAX backend a worker process compiles each architecture (and batch size) it trains at
least once; with the cache, a new process loads what an earlier one on the same machine compiled
(measured in docs/benchmarks.md: 2.6 s of compiling per new trial process down to 0.3 s on the
CPU here). A compiled program found there runs in every trial, so a folder that someone else
owns or can write to is refused with one line, and the worker compiles without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import stat
from collections.abc import Mapping, MutableMapping
from pathlib import Path

__all__ = ["AUTO", "MAX_BYTES", "apply", "default_dir", "keras_backend", "resolve"]

AUTO = "auto"
OFF = frozenset({"off", "none", "no", "false", "0"})
#: the cache's bound on disk (JAX deletes the least recently used programs past it)
MAX_BYTES = 2 * 2**30


def keras_backend(environ: Mapping[str, str]) -> str:
    """The backend Keras will pick: ``KERAS_BACKEND``, else ``backend`` in keras.json (under
    ``KERAS_HOME``, else ~/.keras), else TensorFlow; without importing Keras."""
    name = (environ.get("KERAS_BACKEND") or "").strip().lower()
    if name:
        return name
    home = environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        config = json.loads(Path(home, "keras.json").read_text())
    except (OSError, ValueError):
        return "tensorflow"
    backend = config.get("backend") if isinstance(config, dict) else None
    return backend.strip().lower() if isinstance(backend, str) else "tensorflow"


def default_dir(environ: Mapping[str, str]) -> Path:
    """A folder per user and machine: ``$XDG_CACHE_HOME`` (else ~/.cache)/hyperfleet/jax/HOST.
    Per machine because a home folder may be shared by a cluster's nodes, whose CPUs and GPUs
    need programs compiled for them."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64].strip(".") or "host"
    return Path(os.path.abspath(os.path.expanduser(base))) / "hyperfleet" / "jax" / host


def resolve(option: str | None, environ: Mapping[str, str]) -> tuple[Path | None, str | None]:
    """The cache folder for ``--compile-cache option`` (None: ``auto``), created 0700 if
    missing, and None with the reason when it must not be used.

    ``auto`` is the :func:`default_dir` on the JAX backend and nothing on the others (or where
    ``JAX_COMPILATION_CACHE_DIR`` is set already: the user's own choice); ``off`` is nothing.
    """
    value = (option or AUTO).strip()
    if value.lower() in OFF:
        return None, None
    if value.lower() == AUTO:
        if keras_backend(environ) != "jax" or environ.get("JAX_COMPILATION_CACHE_DIR"):
            return None, None
        path = default_dir(environ)
    else:
        path = Path(os.path.abspath(os.path.expanduser(value)))
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as e:
        return None, (
            f"--compile-cache {path}: {e.strerror or e}; compiling without a persistent cache "
            "(pick a folder you can write, or --compile-cache off)"
        )
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None, (
            f"--compile-cache {path} is not yours or others can write to it "
            f"(mode {stat.S_IMODE(info.st_mode):o}): a compiled program put there would run "
            "in every trial; compiling without a persistent cache (chmod 700 a folder of "
            "your own, or --compile-cache off)"
        )
    return path, None


def apply(path: Path, environ: MutableMapping[str, str]) -> None:
    """Point JAX in this process and the trial processes it starts at ``path``: every program
    cached however quickly it compiled, and at most :data:`MAX_BYTES` on disk where the
    ``filelock`` package is installed (JAX needs it to bound the folder, and without it
    refuses to use a bounded cache at all). Both overridable through JAX's own variables."""
    environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if importlib.util.find_spec("filelock") is not None:
        environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(MAX_BYTES))
