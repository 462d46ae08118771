"""hyperfleet's defaults: the one place each is written down.

Everything a user can change (an option, an environment variable, an experiment setting) starts
from a value here; modules import the name, never repeat the literal.
"""

from __future__ import annotations

from pathlib import Path

#: MongoDB database that holds ``jobs``, ``experiments``, ``workers`` and GridFS (``--db``)
DB_NAME = "hyperfleet"
#: where ``hyperfleet server``/``local`` keep the embedded server's data (``--db-path``)
DB_PATH = Path(".hyperfleet") / "db"
#: seconds a reserved trial stays its worker's without a heartbeat (``--lease``)
LEASE_S = 30.0
#: seconds between a worker's heartbeats; must stay below LEASE_S (``--heartbeat``)
HEARTBEAT_S = 5.0
#: seconds an experiment stays its coordinator's without a renewal (server clock): a second
#: coordinator of the same exp key is refused while it holds, and takes over once it expired
COORDINATOR_LEASE_S = 30.0
#: a RUNNING trial with no usable ``lease_expires`` (a writer that renews none: stock hyperopt's
#: worker, a hand edit) is requeued this long after its ``book_time``/``refresh_time``
#: ($HYPERFLEET_UNLEASED_GRACE_S): longer than such a writer's trials take, or it reaps live ones
UNLEASED_GRACE_S = 3600.0
#: seconds (database clock) after a sweep first saw a GridFS upload without its file document
#: before a sweep deletes its chunks as a killed writer's ($HYPERFLEET_ORPHAN_CHUNK_AGE_S): an
#: upload still going has no file document either (GridFS writes it after the chunks), so this
#: must exceed any upload (coordinator/store/uploads.py)
ORPHAN_CHUNK_AGE_S = 6 * 3600.0
#: attempts (lost or crashed workers) before a trial is marked ERROR (``--max-attempts``)
MAX_ATTEMPTS = 3
#: seconds every process keeps retrying an unreachable MongoDB ($HYPERFLEET_OUTAGE_S)
OUTAGE_S = 60.0
#: a worker whose last heartbeat is older than this counts as gone (``status``, ``workers``)
STALE_WORKER_S = 30.0
#: listings (``status``, ``workers``, the dashboard's workers page) show the workers alive, stopped
#: or silent for at most this long; older registry rows (killed or long gone) only with ``--all``
RECENT_WORKERS_S = 3600.0
#: longest sleep between a worker's polls of an empty queue (``--poll``)
POLL_S = 0.1
#: ``--save-models``: keep the best trial's model, every trial's, or none
SAVE_MODES = ("best", "all", "none")
SAVE_MODE = "best"
#: the GridFS attachment of a trial that holds its saved Keras model
MODEL_ATTACHMENT = "model.keras"
#: ``--algo``: the suggestion algorithms a search may use. ``tpe`` is hyperfleet's fleet-aware TPE
#: (coordinator/fleet_tpe.py, docs/algorithms.md); ``tpe-hyperopt`` is hyperopt's own, unchanged
ALGOS = ("tpe", "tpe-hyperopt", "rand", "atpe", "anneal")
#: ``--liar``: the loss the fleet-aware TPE assumes for queued and running trials
LIARS = ("worst", "mean", "best", "none")
#: chosen by bench/fleet_sim.py (docs/algorithms.md): ``best`` lost everywhere, ``none`` at W >= 32
LIAR = "worst"
#: ``hyperfleet export --format``
EXPORT_FORMATS = ("csv", "json", "jsonl")
#: ``--prune``: early-stopping rules (coordinator/pruning/<rule>.py); none trains every epoch
PRUNE_RULES = ("none", "median", "asha", "hyperband")
PRUNE_RULE = "none"
#: ``--prune-warmup``: epochs a trial always trains before the median rule may stop it
PRUNE_WARMUP_EPOCHS = 0
#: ``--prune-startup``: finished trials the median rule waits for before it stops any
PRUNE_STARTUP_TRIALS = 5
#: ``--prune-reduction``: ASHA/Hyperband keep the best 1/η of the trials at each rung
PRUNE_REDUCTION_FACTOR = 3
#: ``--prune-min-epochs``: ASHA/Hyperband's first rung (epochs); rung k is at min·η^k
PRUNE_MIN_EPOCHS = 1

#: the most worker processes ``hyperfleet local`` starts on this machine (``--workers``, or GPUs
#: x ``--per-gpu``; more machines: ``hyperfleet worker`` on each): a typo such as 100000 must
#: not fork-bomb the host
MAX_LOCAL_WORKERS = 256
#: the most worker containers one ``hyperfleet launch`` starts (GPUs x ``--per-gpu`` plus
#: ``--cpu-workers``)
MAX_CONTAINERS = 256
