"""The queue side: the Celery app, the job contract, the thin task and the producer API."""

from tasks.app import app
from tasks.jobs import create_traffic_mirror_session

__all__ = ["app", "create_traffic_mirror_session"]
