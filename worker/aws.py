"""aiobotocore clients for EC2, SQS and Elastic Load Balancing v2, configured once: the
endpoint, the timeouts, and botocore's own retries off (worker/retry.py is the one retry
layer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, ClientCreatorContext, get_session

from config import Settings

if TYPE_CHECKING:  # stubs only: a development dependency
    from types_aiobotocore_ec2 import EC2Client


def client_config(settings: Settings) -> AioConfig:
    return AioConfig(
        # worker/retry.py owns retries; botocore's own would multiply the attempts.
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=settings.concurrency,
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
    )


def ec2_client(settings: Settings) -> ClientCreatorContext[EC2Client]:
    """`async with ec2_client(settings) as ec2: ...`"""
    return get_session().create_client(
        "ec2",
        region_name=settings.region,
        endpoint_url=settings.ec2_endpoint_url,
        config=client_config(settings),
    )


def sqs_client(settings: Settings, region: str | None = None) -> ClientCreatorContext[Any]:
    """SQS with the same credentials, Region (or `region`: a queue's own), timeouts and retry
    rules as EC2; the long poll (20 s at most) must outlast the read timeout, so reads wait
    that much longer."""
    config = client_config(settings).merge(AioConfig(read_timeout=settings.read_timeout_s + 20))
    return get_session().create_client(
        "sqs",
        region_name=region or settings.region,
        endpoint_url=settings.sqs_endpoint_url or settings.ec2_endpoint_url,
        config=config,
    )


def elbv2_endpoint(settings: Settings) -> str | None:
    """MIRRORQ_ELBV2_ENDPOINT_URL, else the EC2 endpoint's (the emulator serves elbv2 too),
    else None: AWS's regional Elastic Load Balancing endpoint."""
    return settings.elbv2_endpoint_url or settings.ec2_endpoint_url


def elbv2_client(
    settings: Settings, session: AioSession | None = None, region: str | None = None
) -> ClientCreatorContext[Any]:
    """Elastic Load Balancing v2 (botocore's `elbv2`, signed as `elasticloadbalancing`) with
    the same credentials (`session`'s: a place's assumed role), timeouts and retry rules as
    EC2, in `region` (the place's) or MIRRORQ_REGION."""
    return (session or get_session()).create_client(
        "elbv2",
        region_name=region or settings.region,
        endpoint_url=elbv2_endpoint(settings),
        config=client_config(settings),
    )
