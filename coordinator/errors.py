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


class SpaceError(HyperfleetError):
    """A search space could not be found or loaded."""


class TrialLost(HyperfleetError):
    """This worker no longer owns the trial (its lease was reaped or it was cancelled)."""


class DockerUnavailable(HyperfleetError):
    """The Docker engine could not be reached, or the docker SDK is not installed."""
