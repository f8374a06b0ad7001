"""Every Redis key mirrorq writes itself (Celery's own keys aside), in one place."""

PREFIX = "mirrorq"


def idempotency(key: str) -> str:
    return f"{PREFIX}:idempotency:{key}"
