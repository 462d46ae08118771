"""hyperfleet's exceptions: the one place they are defined.

Every message says what happened and what to do next; the CLI prints it as one line.
"""

from __future__ import annotations


class HyperfleetError(Exception):
    """Base class; the CLI prints ``str(error)`` and exits non-zero."""


class ConfigError(HyperfleetError):
    """Bad input from the user: a URI, a setting, a space name, an option value."""


class StoreUnavailable(HyperfleetError):
    """MongoDB could not be reached (or stayed unreachable longer than the outage budget)."""


class AuthError(HyperfleetError):
    """MongoDB refused our credentials."""


class ServerStartError(HyperfleetError):
    """The embedded server did not start."""


class ExperimentMismatch(HyperfleetError):
    """An exp key is reused with a different space, settings or algorithm."""


class ExperimentBusy(HyperfleetError):
    """Another live coordinator runs this experiment (one coordinator per exp key at a time),
    or took it over from this one."""


class SpaceError(HyperfleetError):
    """A search space could not be found or loaded."""


class TrialLost(HyperfleetError):
    """This worker no longer owns the trial (its lease was reaped or it was cancelled)."""


class TrialCrashed(HyperfleetError):
    """The process running a trial died (segfault, OOM kill, ``os._exit``); the message says
    how. The worker records the crash as an attempt and starts a fresh trial process."""


class Interrupted(HyperfleetError):
    """The worker was told to hand its trial back now (second signal, ``--requeue-on-term``)."""


class StopWorking(Exception):
    """Ends ``Worker.work``'s loop normally (signal, ``--max-trials``, idle, search over); the
    message says why. Caught by the worker itself: users never see it."""


class WorkerMissingSpace(HyperfleetError):
    """The experiment a worker is pinned to (``--exp-key``) needs a search space this worker
    does not know: it hands the trial back and stops; restart it with ``--spaces PATH`` (the
    file the search used). An unpinned worker skips that experiment and serves the others."""


class DockerUnavailable(HyperfleetError):
    """The Docker engine could not be reached, or the docker SDK is not installed."""


def counted(n: int, noun: str) -> str:
    """``"1 trial"``, ``"3 trials"``: a count for messages (nouns with a plain ``s`` plural)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class TrialWriteRefused(HyperfleetError):
    """The database refused a trial write that is not an outage (e.g. an insert whose ``_id``
    another trial already uses, or no trial id could be allocated)."""


class CheckpointNotSaved(HyperfleetError):
    """A checkpoint could not be written (a full or read-only shared directory): said once as a
    warning by the store; the trial goes on and its last checkpoint stays."""


class CheckpointRefused(HyperfleetError):
    """A trial's stored checkpoint cannot be used (corrupt, partial, foreign, malformed): the
    message says why; the trial starts fresh."""
