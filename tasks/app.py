"""The Celery application: JSON only, late acks, redelivery of what a dead worker held."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger
from kombu.utils.url import url_to_parts

from config import Settings, get_settings
from tasks import broker
from tasks.connections import publish_retry_policy
from tasks.contract import BATCH_TASK_NAME, KIND_OF_TASK, fleet_queue

UNACKED_MUTEX_EXPIRE_S = 10  # kombu's restore-sweep lock: see broker_transport_options


def create_app(settings: Settings) -> Celery:
    # The worker imports the task module; producers only need the app and the task's name.
    # A fleet's processes share one queue, its scope's (MIRRORQ_AWS_ACCOUNT_ID, MIRRORQ_REGION):
    # a worker consumes only it, so fleets on one Redis never take each other's jobs.
    queue = fleet_queue(settings)
    app = Celery(
        "mirrorq",
        broker=settings.broker_url,
        backend=settings.result_backend,
        include=["tasks.jobs"],
    )
    app.conf.update(
        # Only JSON crosses the queue; a pickled message is refused, never executed.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Ack after the job ran: a worker killed mid-job leaves its messages unacked, and
        # Redis hands them to another worker once the visibility timeout passes.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Each reserved message's visibility clock starts when it is fetched, so reserve
        # no more than the pool can start at once.
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu rescans for abandoned messages every interval x throttle seconds (100 s
            # by default); scan every few seconds so a dead worker's jobs move on promptly.
            "unacked_restore_interval": 2,
            "unacked_restore_throttle": 1,
            # A sweep runs under a Redis lock. One cut off by a Redis restart can't release
            # it, and a graceful restart keeps it in the AOF with its expiry: no worker
            # restores anything until it expires (kombu's default, 5 minutes, held a
            # restarted batch's abandoned messages back that long). A sweep takes
            # milliseconds, and each restore is a transaction WATCHing the unacked hash, so
            # two sweeps at once restore nothing twice.
            "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
        },
        # Publishing rides out a Redis restart as commands do (tasks/connections.py).
        task_publish_retry_policy=publish_retry_policy(settings),
        # A job keeps running while the worker reconnects to a restarted Redis: its message
        # stays unacked there, and the job records its outcome once Redis is back.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_default_queue=queue,
        task_routes={name: {"queue": queue} for name in (*KIND_OF_TASK, BATCH_TASK_NAME)},
        # Results are written by the task itself (tasks/store.py), with every state.
        task_ignore_result=True,
        result_expires=settings.result_ttl_s,
        worker_pool="threads",
        # Threads run messages; a message of a batch holds several jobs (jobs_per_message).
        worker_concurrency=settings.worker_threads,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
    )
    if url_to_parts(settings.broker_url).scheme == "redis":
        # Same wire format as kombu's own Redis transport; less CPU per message.
        app.conf.broker_transport = broker.TRANSPORT
    return app


@after_setup_logger.connect
def _quiet_task_trace(**_: Any) -> None:
    """Celery logs every task's success at INFO; the result backend already records each job,
    and at thousands of jobs a minute those lines cost CPU and bury the ones that matter."""
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)


app = create_app(get_settings())
