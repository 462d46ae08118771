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
#: a keras.json larger than this is not Keras's settings
_KERAS_JSON_MAX = 64 * 1024
#: entries of an existing cache folder checked for foreign owners (JAX keeps it flat)
_SCAN_MAX = 100_000
_ADVICE = (
    "compiling without a persistent cache (use a new, empty folder of your own in folders "
    "only you can write to, or turn it off: --compile-cache off, HYPERFLEET_COMPILE_CACHE=off)"
)


def keras_backend(environ: Mapping[str, str]) -> str:
    """The backend Keras will pick: ``KERAS_BACKEND``, else ``backend`` in keras.json (under
    ``KERAS_HOME``, else ~/.keras), else TensorFlow; without importing Keras. A keras.json that
    is not a small regular file of JSON counts as none."""
    name = (environ.get("KERAS_BACKEND") or "").strip().lower()
    if name:
        return name
    home = environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    path = Path(home, "keras.json")
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > _KERAS_JSON_MAX:
            return "tensorflow"  # a FIFO would block, a huge file is not Keras's
        config = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return "tensorflow"
    backend = config.get("backend") if isinstance(config, dict) else None
    return backend.strip().lower() if isinstance(backend, str) else "tensorflow"


def default_dir(environ: Mapping[str, str]) -> Path:
    """A folder per user and machine: ``$XDG_CACHE_HOME`` (an absolute path; else ~/.cache)
    /hyperfleet/jax/HOST. Per machine because a home folder may be shared by a cluster's nodes,
    whose CPUs and GPUs need programs compiled for them."""
    base = environ.get("XDG_CACHE_HOME") or ""
    if not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64].strip(".") or "host"
    return Path(os.path.abspath(base)) / "hyperfleet" / "jax" / host


def _unsafe(info: os.stat_result, *, sticky_ok: bool) -> str | None:
    """Why a folder is unsafe to trust (None when it is not): owned by someone other than this
    user and root, or writable by group or others (allowed for a sticky folder like /tmp,
    where others cannot rename what is ours, when ``sticky_ok``)."""
    if info.st_uid not in (os.getuid(), 0):
        return f"owned by uid {info.st_uid}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (
        sticky_ok and info.st_mode & stat.S_ISVTX
    ):
        return f"writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _check(path: Path) -> str | None:
    """Why ``path`` (an existing folder) must not hold programs this process runs: it, or a
    folder above it, is someone else's or writable by others (who could swap it for theirs
    after this check), or something in it belongs to someone else."""
    info = path.stat()
    if info.st_uid != os.getuid():
        return f"{path} is owned by uid {info.st_uid}, not you"
    why = _unsafe(info, sticky_ok=False)
    if why:
        return f"{path} is {why}"
    real = path.resolve()  # a symlinked path: the folders above its target count too
    for parent in dict.fromkeys([*path.parents, *real.parents]):
        why = _unsafe(parent.stat(), sticky_ok=True)
        if why:
            return f"{path} is inside {parent}, which is {why}"
    for count, entry in enumerate(path.rglob("*")):
        if count >= _SCAN_MAX:
            break
        entry_info = entry.lstat()
        if entry_info.st_uid != os.getuid():
            return f"{path} holds {entry.name}, owned by uid {entry_info.st_uid}"
        if stat.S_ISDIR(entry_info.st_mode) and _unsafe(entry_info, sticky_ok=False):
            return f"{path} holds {entry.name}, a folder others can write to"
    return None


def resolve(option: str | None, environ: Mapping[str, str]) -> tuple[Path | None, str | None]:
    """The cache folder for ``--compile-cache option`` (None or blank: ``auto``), created 0700
    if missing, and None with the reason (one line) when it must not be used.

    Only on the JAX backend (elsewhere nothing is made or set). ``auto`` is the
    :func:`default_dir`, or nothing where ``JAX_COMPILATION_CACHE_DIR`` is set already (the
    user's own choice); ``off`` is nothing.
    """
    value = (option or "").strip() or AUTO
    if value.lower() in OFF or keras_backend(environ) != "jax":
        return None, None
    if value.lower() == AUTO:
        if environ.get("JAX_COMPILATION_CACHE_DIR"):
            return None, None
        path = default_dir(environ)
    elif value.startswith("~") and not (value == "~" or value.startswith("~/")):
        return None, f"--compile-cache {value}: only ~ (your own home) is expanded; {_ADVICE}"
    else:
        path = Path(os.path.abspath(os.path.expanduser(value)))
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        why = _check(path)
    except OSError as e:
        return None, f"--compile-cache {path}: {e.strerror or e}; {_ADVICE}"
    if why:
        return None, (
            f"--compile-cache: {why}; a compiled program put there would run in every "
            f"trial; {_ADVICE}"
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
