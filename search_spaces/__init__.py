"""Search spaces by name: built-ins, the ``hyperfleet.search_spaces`` entry-point group, and
``--spaces PATH`` (a ``.py`` file or an importable module).

A module given with ``--spaces`` (or an entry point) provides :class:`SearchSpace` objects: every
module-level ``SearchSpace`` is registered (an entry point may also name one object, or a function
returning a list of them).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from coordinator.errors import SpaceError
from coordinator.shown import shown
from search_spaces.base import SearchSpace, Setting, TrialContext, parse_set_options

__all__ = [
    "SearchSpace",
    "Setting",
    "TrialContext",
    "available_spaces",
    "get_space",
    "load_spaces",
    "parse_set_options",
    "register",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hyperfleet.search_spaces"
_registry: dict[str, SearchSpace] = {}
_builtins_loaded = False


def register(space: SearchSpace, *, replace: bool = False) -> SearchSpace:
    """Add ``space`` to the registry; a different space under a taken name is refused."""
    existing = _registry.get(space.name)
    if existing is not None and existing is not space and not replace:
        raise SpaceError(
            f"two search spaces are named {space.name!r} ({existing.source or 'built-in'} and "
            f"{space.source or 'built-in'}); rename one"
        )
    _registry[space.name] = space
    return space


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    from search_spaces import classic, mnist

    for module in (classic, mnist):
        _register_module(module, source="built-in")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin must not hide the others
            logger.warning("entry point %s (%s) failed to load: %s", ep.name, ep.value, e)
            continue
        for space in _spaces_from(obj):
            register(_with_source(space, f"entry point {ep.value}"))


def _spaces_from(obj: Any) -> list[SearchSpace]:
    if isinstance(obj, SearchSpace):
        return [obj]
    if callable(obj):
        produced = obj()
        return [produced] if isinstance(produced, SearchSpace) else list(produced)
    return [v for v in vars(obj).values() if isinstance(v, SearchSpace)]


def _with_source(space: SearchSpace, source: str) -> SearchSpace:
    if space.source:
        return space
    object.__setattr__(space, "source", source)
    return space


def _register_module(module: Any, source: str) -> list[SearchSpace]:
    found = [v for v in vars(module).values() if isinstance(v, SearchSpace)]
    for space in found:
        register(_with_source(space, source))
    return found


def load_spaces(path_or_module: str) -> list[SearchSpace]:
    """Import a ``.py`` file or a module and register the search spaces it defines."""
    _load_builtins()
    target = path_or_module
    try:
        if target.endswith(".py") or Path(target).is_file():
            path = Path(target).resolve()
            if not path.is_file():
                raise SpaceError(f"--spaces {target}: no such file")
            name = f"hyperfleet_user_spaces_{abs(hash(str(path)))}"
            if name in sys.modules:
                module = sys.modules[name]
            else:
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    raise SpaceError(f"--spaces {target}: cannot be imported as Python")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
            source = str(path)
        else:
            module = importlib.import_module(target)
            source = target
    except SpaceError:
        raise
    except SyntaxError as e:
        raise SpaceError(
            f"--spaces {target}: syntax error at line {e.lineno}: {e.msg}; fix the file"
        ) from e
    except Exception as e:  # noqa: BLE001 - any import failure of user code becomes one line
        raise SpaceError(f"--spaces {target}: import failed: {type(e).__name__}: {e}") from e
    found = _register_module(module, source)
    if not found:
        raise SpaceError(f"--spaces {target}: defines no SearchSpace objects")
    return found


def get_space(name: str) -> SearchSpace:
    _load_builtins()
    try:
        return _registry[name]
    except KeyError:
        known = ", ".join(sorted(_registry))
        raise SpaceError(
            f"unknown search space {shown(name)} (known: {known}); add yours with --spaces PATH"
        ) from None


def available_spaces() -> list[SearchSpace]:
    _load_builtins()
    return [_registry[name] for name in sorted(_registry)]
