"""A Dask worker plugin of the local cluster: the one log line of a closing cluster that is not news.

Its own module, so that importing the bootstrap does not import Dask (the plugin subclasses
Dask's ``WorkerPlugin``); workers import it by name when the plugin is registered.
"""

from __future__ import annotations

import logging

from distributed.diagnostics.plugin import WorkerPlugin


def _not_a_lost_heartbeat(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Failed to communicate with scheduler during heartbeat")


class QuietLostHeartbeat(WorkerPlugin):
    """Drops the ERROR (with a traceback) that a worker's heartbeat logs when it finds the scheduler
    already closed, as it is when an interrupted run closes the cluster: 3 of 11 interrupted runs of
    tests/test_faults.py printed it after the one interrupted line. Every other log line stays, and a
    scheduler lost during a run reaches the driver through the futures."""

    name = "buig-quiet-lost-heartbeat"

    def setup(self, worker) -> None:
        logging.getLogger("distributed.worker").addFilter(_not_a_lost_heartbeat)

    def teardown(self, worker) -> None:
        logging.getLogger("distributed.worker").removeFilter(_not_a_lost_heartbeat)
