"""Every option that more than one command takes, declared once, and the one GPU-list parser.

Each function returns a click decorator; where commands differ (required or not, the help line,
an environment variable) that is a parameter, never a second declaration. Options that read an
environment variable say so in their help as ``[env: NAME]``.

Nothing here imports hyperopt, pymongo, numpy or a framework: ``hyperfleet --help`` builds every
command's options and must stay fast.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from coordinator import defaults
from coordinator.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

_GPU_ID = re.compile(r"[0-9]+")
#: what ``--gpu``/``--gpus`` accept for "no GPU, the CPU"
CPU_WORDS = ("none", "cpu", "-1", "")


# -- bounded numbers ---------------------------------------------------------------------------

#: the largest integer MongoDB stores (a signed 64-bit int); larger ones are an OverflowError
INT64_MAX = 2**63 - 1
#: the longest lease-like duration (seconds, turned into milliseconds by pymongo and the store)
MAX_SECONDS = 7 * 24 * 3600.0
#: the longest duration of a whole run (``--timeout``, ``--idle-timeout``): ten years
MAX_RUN_SECONDS = 10 * 365 * 24 * 3600.0


class Int64(click.IntRange):
    """An integer option that MongoDB can store: ``min`` .. 2**63-1 (described as ``x>=min``,
    as ``click.IntRange(min=...)`` is; a larger value gets its own message)."""

    def __init__(self, min: int = 0) -> None:
        super().__init__(min=min)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if number > INT64_MAX:
            self.fail(
                f"{number} is larger than MongoDB's largest integer ({INT64_MAX})", param, ctx
            )
        return number


class FiniteFloat(click.ParamType):
    """A finite float (no ``nan``, ``inf`` or an overflowing literal) within ``[min, max]``."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None) -> None:
        self.min, self.max = min, max

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if (self.min is not None and number < self.min) or (
            self.max is not None and number > self.max
        ):
            low = "" if self.min is None else f"{self.min:g}<="
            high = "" if self.max is None else f"<={self.max:g}"
            self.fail(f"{value!r} is not in the range {low}x{high}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"FiniteFloat({self.min}, {self.max})"


def _stack(*decorators: Decorator) -> Decorator:
    """One decorator of several options, listed in ``--help`` in the order given."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def _env(help: str, var: str | None) -> str:
    return f"{help} [env: {var}]" if var else help


# -- MongoDB and the experiment ------------------------------------------------------------------


def mongo_options(
    *, required: bool = True, help: str = "MongoDB URI (mongodb:// or mongodb+srv://)"
) -> Decorator:
    """``--mongo`` (or $HYPERFLEET_MONGO, so passwords stay out of process lists) and ``--db``."""
    return _stack(
        click.option(
            "--mongo",
            "mongo",
            envvar="HYPERFLEET_MONGO",
            required=required,
            metavar="URI",
            help=_env(help, "HYPERFLEET_MONGO"),
        ),
        click.option(
            "--db",
            "db",
            envvar="HYPERFLEET_DB",
            default=defaults.DB_NAME,
            show_default=True,
            help=_env("database name", "HYPERFLEET_DB"),
        ),
    )


#: what an exp key may hold: it becomes part of file names (worker logs) and container names
_EXP_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+=-]{0,199}")


def check_exp_key(value: str, option: str = "--exp-key") -> str:
    """The one rule for exp keys, wherever they come from (``--exp-key``, $HYPERFLEET_EXP_KEY, a
    default built from a space name): 1-200 letters, digits and ``_ . : @ + = -``, starting with
    a letter, digit or ``_`` — no path separators, no ``..``, nothing a shell or a file name
    would read differently. Raises a one-line :class:`ConfigError`."""
    if not _EXP_KEY_RE.fullmatch(value) or ".." in value:
        raise ConfigError(
            f"{option} {value!r}: use 1-200 letters, digits and _ . : @ + = - (starting with a "
            "letter, digit or _; no '/' or '..': the key becomes part of file names)"
        )
    return value


def _exp_key_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return check_exp_key(value)
    except ConfigError as e:
        raise click.BadParameter(str(e).removeprefix(f"--exp-key {value!r}: ")) from None


def exp_key_option(help: str, *, required: bool = False) -> Decorator:
    """``--exp-key`` (or $HYPERFLEET_EXP_KEY): the experiment a command creates, serves or reads,
    checked by :func:`check_exp_key`.

    ``help`` says what the key means to the command (the one to stop; serve only this one; ...).
    """
    return click.option(
        "--exp-key",
        "exp_key",
        envvar="HYPERFLEET_EXP_KEY",
        required=required,
        callback=_exp_key_callback,
        help=_env(help, "HYPERFLEET_EXP_KEY"),
    )


# -- search spaces and searches ------------------------------------------------------------------


def spaces_option(
    help: str = "extra search spaces: a .py file or an importable module (repeatable)",
) -> Decorator:
    return click.option("--spaces", "spaces", multiple=True, metavar="PATH", help=help)


def space_options() -> Decorator:
    """``--set KEY=VALUE`` and ``--spaces``: which space a search runs, with which settings."""
    return _stack(
        click.option(
            "--set",
            "set_pairs",
            multiple=True,
            metavar="KEY=VALUE",
            help="override a setting of the space (repeatable); `hyperfleet spaces` lists them",
        ),
        spaces_option(),
    )


def max_attempts_option(help: str) -> Decorator:
    return click.option(
        "--max-attempts",
        type=Int64(min=1),
        default=defaults.MAX_ATTEMPTS,
        show_default=True,
        help=help,
    )


def search_options() -> Decorator:
    """The options of a search (``search`` and ``local``); they become a ``SearchConfig``."""
    return _stack(
        click.option(
            "--max-evals",
            type=Int64(min=1),
            default=50,
            show_default=True,
            help="number of trials to evaluate in all (a rerun continues up to it)",
        ),
        click.option(
            "--algo",
            default="tpe",
            show_default=True,
            help=f"suggestion algorithm: {', '.join(defaults.ALGOS)}",
        ),
        click.option(
            "--liar",
            type=click.Choice(defaults.LIARS),
            default=defaults.LIAR,
            show_default=True,
            help="--algo tpe: the loss assumed for queued and running trials (docs/algorithms.md)",
        ),
        click.option(
            "--queue-len",
            type=Int64(min=1),
            default=None,
            help="trials queued ahead of the workers [default: 2 x live workers, min 2; 8 x while "
            "each worker finishes a trial in under 0.25 s]",
        ),
        click.option(
            "--seed", type=Int64(min=0), default=None, help="random seed of the algorithm"
        ),
        seconds_option(
            "--timeout",
            "timeout_s",
            "stop queueing new trials after this many seconds",
            maximum=MAX_RUN_SECONDS,
        ),
        click.option(
            "--loss-threshold",
            type=FiniteFloat(),
            default=None,
            help="stop once a trial's loss is below this",
        ),
        max_attempts_option("a trial whose worker is lost or crashes this often becomes ERROR"),
        click.option(
            "--force",
            is_flag=True,
            help="continue an exp key even if its space, settings or algo differ",
        ),
        click.option(
            "--progress/--no-progress",
            default=None,
            help="progress bar [default: on when stderr is a terminal]",
        ),
        pruning_options(),
    )


#: the ``--prune-*`` options' destinations, as ``pruning_kwargs`` hands them on
PRUNE_OPTIONS = {
    "prune_metric": "metric",
    "prune_direction": "direction",
    "prune_warmup": "warmup_epochs",
    "prune_startup": "startup_trials",
    "prune_reduction": "reduction_factor",
    "prune_min_epochs": "min_epochs",
    "prune_max_epochs": "max_epochs",
    "promote": "promote",
    "promote_wait": "promote_wait",
}


def pruning_options() -> Decorator:
    """``--prune RULE`` and its parameters: early stopping of hopeless trials (docs/pruning.md).
    Unset parameters take their defaults from the rule and the space (``resolve_pruning``)."""
    count = Int64(min=0)
    return _stack(
        click.option(
            "--prune",
            type=click.Choice(defaults.PRUNE_RULES),
            default=defaults.PRUNE_RULE,
            show_default=True,
            help="stop hopeless trials early: median, asha or hyperband (see docs/pruning.md)",
        ),
        click.option(
            "--prune-metric",
            default=None,
            metavar="NAME",
            help="per-epoch metric the rule compares [default: the one the loss comes from, "
            "e.g. val_loss]",
        ),
        click.option(
            "--prune-direction",
            type=click.Choice(("min", "max")),
            default=None,
            help="whether smaller or larger --prune-metric is better [default: from the metric]",
        ),
        click.option(
            "--prune-warmup",
            type=count,
            default=None,
            help=f"median: epochs never stopped [default: {defaults.PRUNE_WARMUP_EPOCHS}]",
        ),
        click.option(
            "--prune-startup",
            type=count,
            default=None,
            help="median: finished trials to wait for before stopping any "
            f"[default: {defaults.PRUNE_STARTUP_TRIALS}]",
        ),
        click.option(
            "--prune-reduction",
            type=Int64(min=2),
            default=None,
            help="asha/hyperband: keep the best 1/N at each rung "
            f"[default: {defaults.PRUNE_REDUCTION_FACTOR}]",
        ),
        click.option(
            "--prune-min-epochs",
            type=Int64(min=1),
            default=None,
            help=f"asha/hyperband: the first rung's epoch [default: {defaults.PRUNE_MIN_EPOCHS}]",
        ),
        click.option(
            "--prune-max-epochs",
            type=Int64(min=1),
            default=None,
            help="a trial's last epoch (every rule); hyperband: the largest budget, which sets "
            "its brackets [default: the space's epochs setting]",
        ),
        click.option(
            "--promote",
            is_flag=True,
            default=None,
            help="asha/hyperband: pause a trial below a rung's cut (checkpointed) instead of "
            "stopping it, and resume it when it ranks in the rung's best 1/N later "
            "(ASHA's promotions; see docs/pruning.md)",
        ),
        click.option(
            "--promote-wait",
            is_flag=True,
            default=None,
            help="with --promote: a rung that fewer than N trials reached (N: "
            "--prune-reduction) lets nobody go on until N have (Li et al.'s rule; the search's "
            "end promotes its best) [default: its best goes on, which trains the first trials "
            "through sooner]",
        ),
    )


def pruning_kwargs(opts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Take ``--prune`` and its ``--prune-*`` options out of a command's ``opts``: the rule and
    the keyword arguments of ``coordinator.pruning.resolve_pruning``."""
    rule = opts.pop("prune", defaults.PRUNE_RULE)
    return rule, {name: opts.pop(dest, None) for dest, name in PRUNE_OPTIONS.items()}


# -- where and how trials run --------------------------------------------------------------------


def parse_gpu_ids(value: str | None, option: str = "--gpus") -> list[str] | None:
    """The one reading of a GPU list, for ``--gpu``, ``--gpus`` and $HYPERFLEET_GPU.

    ``None`` (not given) -> ``None``; ``none``, ``cpu``, ``-1`` or empty -> ``[]`` (the CPU);
    ``"0, 2"`` -> ``["0", "2"]``. Ids are whole numbers from 0, as ``nvidia-smi -L`` numbers
    them, each listed once (``"01"`` is GPU 1). Anything else is a one-line ConfigError that
    names ``option``.
    """
    if value is None:
        return None
    if value.strip().lower() in CPU_WORDS:
        return []
    parts = [part.strip() for part in value.split(",")]
    if not all(_GPU_ID.fullmatch(part) for part in parts):
        raise ConfigError(
            f"{option} {value!r}: expected GPU ids like 0 or 0,1 (see nvidia-smi -L), or none"
        )
    ids = [str(int(part)) for part in parts]
    twice = sorted({i for i in ids if ids.count(i) > 1}, key=int)
    if twice:
        raise ConfigError(
            f"{option} {value!r}: GPU {twice[0]} is listed twice; list each GPU once "
            "(--per-gpu runs several workers on one)"
        )
    return ids


def _gpu_ids_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    return parse_gpu_ids(value, param.opts[0])


def gpu_option() -> Decorator:
    """``--gpu`` of one worker (or $HYPERFLEET_GPU): parsed to a list, ``[]`` for the CPU."""
    return click.option(
        "--gpu",
        default=None,
        envvar="HYPERFLEET_GPU",
        metavar="ID|none",
        callback=_gpu_ids_callback,
        help=_env(
            "pin to this GPU (sets CUDA_VISIBLE_DEVICES); none forces the CPU", "HYPERFLEET_GPU"
        ),
    )


def gpus_options(*, gpus_help: str, per_gpu_help: str) -> Decorator:
    """``--gpus IDS`` (parsed to a list) and ``--per-gpu N``: workers for each listed GPU."""
    return _stack(
        click.option(
            "--gpus", default=None, metavar="IDS", callback=_gpu_ids_callback, help=gpus_help
        ),
        click.option(
            "--per-gpu",
            type=click.IntRange(1, defaults.MAX_CONTAINERS),
            default=1,
            show_default=True,
            help=per_gpu_help,
        ),
    )


def threads_option(help: str, *, envvar: str | None = None) -> Decorator:
    return click.option(
        "--threads",
        type=Int64(min=1),
        default=None,
        envvar=envvar,
        help=_env(help, envvar),
    )


def isolate_option(help: str) -> Decorator:
    return click.option("--isolate/--no-isolate", default=True, show_default=True, help=help)


def seconds_option(
    flag: str,
    dest: str,
    help: str,
    *,
    default: float | None = None,
    minimum: float = 0,
    maximum: float = MAX_SECONDS,
) -> Decorator:
    """An option in seconds (``--lease``, ``--timeout``, ...) stored as ``dest`` (``*_s``): a
    finite number from ``minimum`` to ``maximum`` (a week unless said otherwise)."""
    return click.option(
        flag,
        dest,
        type=FiniteFloat(min=minimum, max=maximum),
        default=default,
        show_default=default is not None,
        help=help,
    )


def listen_options(*, port: int, host_help: str, port_help: str) -> Decorator:
    """``--host`` (loopback by default) and ``--port`` of a serving command (server, dashboard)."""
    return _stack(
        click.option(
            "--port", type=click.IntRange(0, 65535), default=port, show_default=True, help=port_help
        ),
        click.option("--host", default="127.0.0.1", show_default=True, help=host_help),
    )


def idle_timeout_option(help: str) -> Decorator:
    return seconds_option("--idle-timeout", "idle_timeout_s", help, maximum=MAX_RUN_SECONDS)


def _db_path_callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from coordinator.errors import ServerStartError
    from coordinator.server import check_db_path  # light: no pymongo, no hyperopt

    try:
        check_db_path(value, create=False)  # created when the server starts, not if refused
    except ServerStartError as e:
        raise click.BadParameter(str(e)) from None
    return value


def db_path_option(help: str) -> Decorator:
    """``--db-path``: the embedded server's storage directory (``:memory:`` for a throwaway
    one); created when the server starts (a run refused before that leaves none), and refused
    in one line, before anything starts, when it cannot be created or written."""
    return click.option(
        "--db-path",
        type=click.Path(file_okay=False),
        default=str(defaults.DB_PATH),
        show_default=True,
        callback=_db_path_callback,
        help=help,
    )


# -- Keras models --------------------------------------------------------------------------------


def save_models_option(help: str, *, envvar: str | None = None) -> Decorator:
    """``--save-models best|all|none``: which trials keep their Keras model as an attachment."""
    return click.option(
        "--save-models",
        type=click.Choice(defaults.SAVE_MODES),
        default=defaults.SAVE_MODE,
        show_default=True,
        envvar=envvar,
        help=help,
    )


def best_model_options(*, save_model_help: str, evaluate_help: str) -> Decorator:
    """``--save-model PATH`` and ``--evaluate``: what to do with the best trial's Keras model."""
    return _stack(
        click.option(
            "--save-model",
            type=click.Path(dir_okay=False),
            default=None,
            metavar="PATH",
            help=save_model_help,
        ),
        click.option("--evaluate", is_flag=True, help=evaluate_help),
    )


# -- inspection and the group ---------------------------------------------------------------------


def stale_option() -> Decorator:
    return seconds_option(
        "--stale-after",
        "stale_s",
        "flag a worker stale when its last heartbeat is older than this many seconds",
        default=defaults.STALE_WORKER_S,
    )


def output_option(dest: str, help: str, *, directory: bool = False, **kwargs: Any) -> Decorator:
    """``-o/--output``: a file (or with ``directory``, a folder) to write."""
    return click.option(
        "-o",
        "--output",
        dest,
        type=click.Path(file_okay=not directory, dir_okay=directory, path_type=Path),
        help=help,
        **kwargs,
    )


def log_level_option() -> Decorator:
    return click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        default="info",
        show_default=True,
        envvar="HYPERFLEET_LOG_LEVEL",
    )
