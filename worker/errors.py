"""Every failure a job can meet, in one table: its code, and what the worker does about it.

botocore's, aiohttp's and redis-py's exceptions are used as they are; this module only reads
them. Three things can happen to a job that meets an error:

- RETRY: transient (throttling, 5xx from EC2 or from anything in between, an answer that
  could not be read, a dropped connection). Retried with backoff and the same ClientToken.
- FAIL: permanent (validation, `*.NotFound`, quotas, IdempotentParameterMismatch, ...). The
  job ends `failed` with the code.
- RESUME: Redis, where the job is recorded, is unreachable. Nothing is decided about the
  job: the worker waits for Redis and runs the job on from its record.
- YIELD: another worker owns the job now (this one was cut off from Redis past its run
  lease, and a copy took over): this one stops and records nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

import aiohttp
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
from botocore.parsers import ResponseParserError
from redis.exceptions import RedisError

from tasks.errors import MirrorqError, SupersededError

# Transient by EC2's own description: request throttling and server-side trouble.
THROTTLING_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
SERVER_CODES = frozenset(
    {"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "RequestTimeout"}
)
# SQS's (the listener's receives): throttled, its KMS key throttled, too many messages in flight
# (room comes back as messages are deleted or their visibility times out).
SQS_TRANSIENT_CODES = frozenset({"RequestThrottled", "KmsThrottled", "OverLimit"})
# STS's, when a job's role is assumed (its credentials are fetched on the job's first call):
# AccessDenied (not assumable by us, or a wrong or missing ExternalId), RegionDisabledException
# and validation are permanent, as anything not listed; IDPCommunicationError and its
# throttling (Throttling, above) and 5xx are transient. A call signed with credentials that
# expired on the way (RequestExpired from EC2, ExpiredToken from STS, the source credentials
# of a chained role) is retried: the next attempt signs with the refreshed set.
STS_TRANSIENT_CODES = frozenset({"IDPCommunicationError", "ExpiredToken", "RequestExpired"})
STS_OPERATIONS = frozenset({"AssumeRole", "GetCallerIdentity"})
# Elastic Load Balancing v2's (a load-balancer target's health, mirrorq/targets.py): its
# failures are named after it, not EC2.
ELBV2_OPERATIONS = frozenset({"DescribeLoadBalancers"})
TRANSIENT_CODES = THROTTLING_CODES | SERVER_CODES | SQS_TRANSIENT_CODES | STS_TRANSIENT_CODES
# Everything else EC2 answers is permanent: validation, *.NotFound, quota *LimitExceeded,
# IdempotentParameterMismatch, UnauthorizedOperation... Retrying cannot change the answer.
# Except any 5xx, and 429, whatever the code: a proxy, load balancer or VPC endpoint in front
# of EC2 answers 502/503/504 (botocore names the code after the status) and may have
# forwarded the create first. Retrying with the same token finds out.
TOO_MANY_REQUESTS = 429

# EC2's answers for an id that does not exist (sic: "NoFound" is how EC2 spells the target's).
NOT_FOUND_CODES = frozenset(
    {
        "InvalidTrafficMirrorTargetNoFound",
        "InvalidTrafficMirrorFilterNotFound",
        "InvalidTrafficMirrorSessionNotFound",
    }
)

# A session EC2 does not know: the code EC2 answers (`InvalidTrafficMirrorSessionId.NotFound`,
# the one the Terraform AWS provider and AWS's own samples match on), and the one its error
# code reference lists (`InvalidTrafficMirrorSessionNotFound`). A delete that meets either
# after an attempt of ours succeeded (worker/execute.py).
SESSION_NOT_FOUND = "InvalidTrafficMirrorSessionId.NotFound"
SESSION_NOT_FOUND_CODES = frozenset({SESSION_NOT_FOUND, "InvalidTrafficMirrorSessionNotFound"})

# A create whose source ENI is on an instance type that cannot be a traffic mirror source (bare
# metal, T2, most non-Nitro types, the Nitro types the Traffic Mirroring guide lists). EC2
# documents no code for it; `UnsupportedOperation`, its common client error for "an unsupported
# operation", is what mirrorq expects and the emulator answers (docs/emulator.md). Permanent:
# the instance type does not change by retrying. Named here so that no status overrides it.
UNSUPPORTED_SOURCE_CODE = "UnsupportedOperation"
PERMANENT_CODES = frozenset({UNSUPPORTED_SOURCE_CODE})

DRY_RUN_OK = "DryRunOperation"
EC2_SAYS_NUMBER_TAKEN = "InvalidParameterValue"  # among other things; read with the describe
EC2_SAYS_PARAMETERS_DIFFER = "IdempotentParameterMismatch"  # our ClientToken, other parameters
EC2_SAYS_ENI_FULL = "TrafficMirrorSessionsPerInterfaceLimitExceeded"  # 3 sessions already


class Action(StrEnum):
    RETRY = "retry"
    FAIL = "fail"
    RESUME = "resume"
    YIELD = "yield"


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    action: Action
    operation: str | None = None  # the action that failed, when EC2 (STS, elbv2, a proxy) answered

    @property
    def retryable(self) -> bool:
        return self.action is Action.RETRY

    @property
    def throttled(self) -> bool:
        """EC2 throttled the call (STS throttling a role's AssumeRole spends no EC2 bucket)."""
        return self.code in THROTTLING_CODES and self.operation not in STS_OPERATIONS

    @property
    def service(self) -> str:
        """Who answered, as a message names it: EC2 unless the action was another's."""
        if self.operation in ELBV2_OPERATIONS:
            return "Elastic Load Balancing"
        if self.operation in STS_OPERATIONS:
            return "STS"
        return "EC2"

    @property
    def not_found(self) -> bool:
        return self.code in NOT_FOUND_CODES or self.code.endswith(".NotFound")


def classify(error: BaseException) -> Failure:  # noqa: PLR0911 - a return per row
    """The table: what `error` is called, and what the worker does about it."""
    if isinstance(error, SupersededError):
        return Failure(error.code, str(error), Action.YIELD)
    if isinstance(error, MirrorqError):
        return Failure(error.code, str(error), Action.RETRY if error.retryable else Action.FAIL)
    if isinstance(error, RedisError):
        return Failure("RedisUnavailable", f"{type(error).__name__}: {error}", Action.RESUME)
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(info.get("Code") or status or "Unknown")
        transient = code not in PERMANENT_CODES and (
            code in TRANSIENT_CODES or status >= 500 or status == TOO_MANY_REQUESTS
        )
        message = str(info.get("Message") or error)
        return Failure(
            code, message, Action.RETRY if transient else Action.FAIL, error.operation_name
        )
    if isinstance(error, ResponseParserError):
        # A 200 or 5xx whose body is not EC2's XML: something in between answered, or the
        # answer was cut short. The create may have been carried out; the token says.
        return Failure("UnreadableResponse", str(error)[:300], Action.RETRY)
    if isinstance(error, ConnectionError | HTTPClientError | aiohttp.ClientError):
        # The request may or may not have reached EC2; the fixed ClientToken makes a retry safe.
        return Failure("ConnectionError", f"{type(error).__name__}: {error}", Action.RETRY)
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return Failure("Timeout", "no answer from EC2 in time", Action.RETRY)
    return Failure(type(error).__name__, str(error), Action.FAIL)


def is_transient(error: BaseException) -> bool:
    return classify(error).retryable
