"""A quiet console: the start-up banners of TensorFlow, absl, oneDNN and XLA kept off stderr.

TensorFlow 2.21 logs ``oneDNN custom operations are on ...`` and absl's ``WARNING: All log
messages before absl::InitializeLog() is called are written to STDERR`` from C++ while it is
imported, before any setting of ``TF_CPP_MIN_LOG_LEVEL`` is read; only a filter on file
descriptor 2 keeps them out of a command's output and a worker's log.

:func:`install` puts an import hook in front of the frameworks (``tensorflow``, ``jax``,
``jaxlib``): while one of them is being imported, fd 2 goes to a temporary file; afterwards every
line of it is written to the real stderr except the known banners (:data:`NOISE`: absl's INFO and
WARNING lines, the pre-init notice, TensorFlow's CPU-feature lines and the CUDA factory
re-registrations of GPU wheels). Errors (absl's ``E``/``F`` lines, Python tracebacks, anything
else) pass unchanged, only later. ``hyperfleet --verbose`` (``$HYPERFLEET_VERBOSE``, inherited
by workers) turns the filter off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import ModuleType
from typing import Any

#: set (to anything but "" or "0") to see the frameworks' banners
VERBOSE_ENV = "HYPERFLEET_VERBOSE"
#: the top-level modules whose import prints banners
FRAMEWORKS = frozenset({"tensorflow", "jax", "jaxlib"})
#: lines dropped while a framework is imported; anything else is kept
NOISE = re.compile(
    rb"^(?:"
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] .*"  # absl INFO/WARNING lines
    rb"|This TensorFlow binary is optimized .*"
    rb"|To enable the following instructions: .*"
    rb"|E\d{4} .*Unable to register cu(?:DNN|FFT|BLAS) factory.*"
    rb"|.*computation placer already registered.*"
    rb")$"
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def drop_noise(text: bytes) -> bytes:
    """``text`` without the lines :data:`NOISE` matches."""
    lines = text.splitlines(keepends=True)
    return b"".join(line for line in lines if not NOISE.match(line.rstrip(b"\r\n")))


@contextmanager
def filtered_stderr() -> Iterator[None]:
    """While inside, fd 2 goes to a temporary file; on leaving (also by an exception) its
    lines but the banners are written to the real stderr."""
    with suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with suppress(AttributeError, ValueError, OSError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = drop_noise(tmp.read())
            if kept:
                os.write(2, kept)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with filtered_stderr():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # resource readers, get_code, is_package...
        return getattr(self._loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self._finding = False

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in FRAMEWORKS or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Filter the frameworks' banners from now on in this process (idempotent; nothing when
    :func:`verbose` or a framework is already imported)."""
    if verbose() or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # later C++ INFO/WARNING lines too
    sys.meta_path.insert(0, _QuietFinder())
