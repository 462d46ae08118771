"""A pytest plugin (``-p hyperfleet_in_hyperopt``) that runs hyperopt's own
``hyperopt/tests/integration/test_mongoexp.py`` with hyperfleet's classes in place of
hyperopt's: ``hyperopt.mongoexp.MongoTrials`` becomes :class:`coordinator.trials.HyperfleetTrials`
and ``hyperopt.mongoexp.MongoJobs`` :class:`coordinator.hyperopt_jobs.HyperoptJobs`.

The swap happens when the plugin is imported, before pytest imports the test file, so both its
``from hyperopt.mongoexp import MongoJobs, MongoTrials`` and hyperopt's own module-level lookups
(``MongoWorker.run_one``'s ``MongoTrials(mj, ...)``, ``main_worker_helper``'s
``MongoJobs.new_from_connection_str``) get hyperfleet's. See
``tests/coordinator/test_hyperopt_own_tests.py``.
"""

from __future__ import annotations

import hyperopt.mongoexp

from coordinator.hyperopt_jobs import HyperoptJobs
from coordinator.trials import HyperfleetTrials

hyperopt.mongoexp.MongoJobs = HyperoptJobs  # type: ignore[misc]
hyperopt.mongoexp.MongoTrials = HyperfleetTrials  # type: ignore[misc]
