"""Typed settings for every mirrorq process; the only module that reads the environment."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# A standard SQS queue's name (FIFO names end in `.fifo`; EventBridge needs a group id for them).
SQS_QUEUE_NAME = r"^[A-Za-z0-9_-]{1,80}$"
# An API token is RFC 6750's bearer token syntax (b64token), long enough not to be guessed: so
# a comment, a line of prose or a half-pasted token is refused at start-up, never let in.
API_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]{16,}=*")
API_TOKEN_RULE = (
    "a token is at least 16 characters of letters, digits and - . _ ~ + / "  # noqa: S105 - a rule
    "(= allowed at the end), no spaces"
)


class Settings(BaseSettings):
    """Settings shared by producers, workers and the CLI (environment prefix `MIRRORQ_`)."""

    model_config = SettingsConfigDict(
        env_prefix="MIRRORQ_", env_file=".env", extra="ignore", frozen=True
    )

    broker_url: str = DEFAULT_REDIS_URL
    # Empty means "the broker's Redis": one Redis is the normal deployment.
    result_backend: str = ""
    # Unset means real AWS; point it at `mirrorq emulator` for demos and tests.
    ec2_endpoint_url: str | None = None
    # Where `mirrorq listen` reads SQS; unset means the EC2 endpoint's (the emulator serves
    # both), or real AWS when that is unset too.
    sqs_endpoint_url: str | None = None
    # Where roles are assumed (STS AssumeRole, GetCallerIdentity); unset means the EC2
    # endpoint's (the emulator serves STS too), or AWS's regional STS when that is unset too.
    sts_endpoint_url: str | None = None
    # Where Elastic Load Balancing (v2) is read (DescribeLoadBalancers: whether an NLB
    # target's load balancer is alive); unset means the EC2 endpoint's (the emulator serves
    # elbv2 too), or AWS's regional endpoint when that is unset too.
    elbv2_endpoint_url: str | None = None
    region: str = Field(
        default="us-east-1",
        validation_alias=AliasChoices("MIRRORQ_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    )

    # Calls in flight per worker process: the work is waiting on EC2, not CPU.
    concurrency: int = Field(default=64, ge=1, le=1024)
    # A batch's jobs travel this many to a message, run together on the worker's event loop:
    # Celery's cost per message (about 1.5 ms of a worker's CPU) is paid once for all of
    # them. A worker runs concurrency / jobs_per_message messages at once, so a job sent on
    # its own (`submit`, `send_task`) gets one of that many slots. 1: a message per job.
    jobs_per_message: int = Field(default=8, ge=1, le=64)
    # A job stops retrying transient errors once this many seconds have passed since it started.
    job_deadline_s: float = Field(default=120.0, gt=0)
    # Full-jitter exponential backoff: sleep ~ U(0, min(cap, base * 2**attempt)).
    backoff_base_s: float = Field(default=0.1, gt=0)
    backoff_cap_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=15.0, gt=0)
    # A message not acked within this many seconds is handed to another worker; it must
    # outlast the longest job or a healthy job would run twice (harmless, but wasteful).
    visibility_timeout_s: int = Field(default=300, ge=1)
    result_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)

    # The fleet-wide EC2 request rate, shared by every worker through Redis (0 = no limit).
    # EC2's default bucket for mutating actions is 50 refilled at 5/s; a burst a little below
    # 50 leaves a cushion against network jitter making calls arrive early.
    ec2_rate: float = Field(default=5.0, ge=0)
    ec2_burst: int = Field(default=40, ge=1)
    # Describe* calls (auto SessionNumber) have their own, larger EC2 bucket: 100 at 20/s.
    ec2_describe_rate: float = Field(default=20.0, ge=0)
    ec2_describe_burst: int = Field(default=90, ge=1)
    # After RequestLimitExceeded the shared rate is cut by this factor...
    ec2_rate_decrease: float = Field(default=0.7, gt=0, lt=1)
    # ...and grows back by this fraction of the configured rate per second.
    ec2_rate_recovery: float = Field(default=0.01, gt=0)
    # Lost-message repair: kombu's Redis transport pops a message before it records it as
    # unacked, so a worker killed in between loses it. Workers look for unfinished accepted
    # jobs in no message (waiting in the queue or held by a worker) and not running, and
    # publish them again.
    repair_interval_s: float = Field(default=30.0, gt=0)
    lost_after_s: float = Field(default=60.0, gt=0)
    # The fleet's account: with the Region, its scope (its queue, its limiters' keys, the
    # account its jobs' records name). Set it, on every process of each fleet, when several
    # accounts share one Redis; "default" (unset) keeps the queue `mirrorq`.
    aws_account_id: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # A worker keeps an EC2 client (and its assumed-role credentials) open for at most this
    # many places (role and Region) besides its default one, the least recently used idle
    # one closed first; a place in use by a running job is never closed (worker/roads.py).
    client_cache: int = Field(default=32, ge=1, le=4096)
    # Leases (on an ENI while a job reads its sessions and creates, on a job while a worker
    # runs it) are renewed every third of this while held; a holder that stops renewing
    # (killed, cut off from Redis) loses them this long after its last renewal. A create is
    # only sent under a lease just extended to outlast the call.
    lease_s: float = Field(default=30.0, gt=0)
    # How long a mirrorq process retries a Redis command while Redis is unreachable (a
    # restart, a failover) before that command fails. Workers never fail a job for it: they
    # wait for Redis and carry on.
    redis_retry_s: float = Field(default=20.0, ge=0)
    # Redis Sentinel (MIRRORQ_BROKER_URL / MIRRORQ_RESULT_BACKEND of the form
    # `sentinel://[:password@]host:26379[/db];sentinel://host2:26379`, the Redis password and
    # database in the first): the name the sentinels know the primary by, and their own
    # password if they require one (Redis's own is in the URL).
    sentinel_master: str = Field(default="mymaster", min_length=1)
    sentinel_password: SecretStr | None = None
    # Accepted means replicated: a job or batch is reported accepted only once its acceptance
    # reached this many replicas (Redis WAIT), within redis_replica_timeout_s; else the
    # producer gets NotReplicated (retry with the same idempotency key), and nothing of it
    # runs. 0 (the default): accepted once the primary has it. Fenced creates (leases) wait
    # for the same number (tasks/replication.py).
    redis_min_replicas: int = Field(default=0, ge=0, le=16)
    # Below the socket timeout (tasks/connections.py, 5 s): a WAIT longer than that would
    # be taken for a hung Redis.
    redis_replica_timeout_s: float = Field(default=1.0, gt=0, le=4.0)

    # A prune pass (`reconcile --prune`, a policy's `prune`) that would delete more than this
    # share of an account's managed sessions deletes nothing and says why, unless --force: a
    # typo in a policy (a tag misspelt, a rule deleted) must not unmirror a fleet.
    prune_max_share: float = Field(default=0.2, ge=0, le=1)

    # The HTTP API: bearer tokens, comma-separated (or one a line in a file), never logged.
    api_tokens: SecretStr | None = None
    api_tokens_file: Path | None = None
    # A body larger than this is refused (413) before it is read whole: room for a
    # 10,000-job batch with tags on every job.
    api_max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # A request's head (request line and headers) not all in this many seconds after its
    # connection opened or its previous answer ended closes the connection: uvicorn has no
    # such bound, so partial heads (slowloris) would be held open forever.
    api_header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    # The dashboard (/ui/): how long a login lasts; how often coverage is computed again
    # (live EC2 reads: however many browsers watch, once per period); how often, and over how
    # long, the fleet is sampled for its charts while a page is open; after how long without
    # a reconcile pass its figures are called stale.
    ui_session_ttl_s: int = Field(default=8 * 3600, ge=60, le=7 * 24 * 3600)
    ui_coverage_refresh_s: float = Field(default=30.0, ge=0.5)
    ui_sample_s: float = Field(default=5.0, ge=0.5, le=300)
    ui_history_s: float = Field(default=600.0, ge=60, le=24 * 3600)
    ui_reconcile_stale_s: float = Field(default=900.0, ge=1)

    # How the long-running commands (worker, listen, api, reconcile --every, emulator) log:
    # `text` lines for people, or `json`, one object a line for a log search engine (Loki,
    # Elasticsearch, CloudWatch Logs Insights); `--log-format` overrides it. The level below
    # which lines are dropped (`--log-level`; a worker's is Celery's `--loglevel`).
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.lower() if info.field_name == "log_format" else value.upper()

    def api_token_values(self) -> list[str]:
        """The API's bearer tokens: MIRRORQ_API_TOKENS (comma-separated) and
        MIRRORQ_API_TOKENS_FILE (one a line; blank lines and `#` comments are not tokens).
        One that breaks API_TOKEN_RULE is a ValueError naming where it is, never what it is:
        the API must not start with a token nobody meant, nor print one."""
        found: list[tuple[str, str]] = []  # (where, token)
        if self.api_tokens is not None:
            for n, token in enumerate(self.api_tokens.get_secret_value().split(","), 1):
                if token.strip():
                    found.append((f"MIRRORQ_API_TOKENS, token {n}", token.strip()))
        if self.api_tokens_file is not None:
            for n, line in enumerate(_text_lines(self.api_tokens_file), 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    found.append((f"{self.api_tokens_file}, line {n}", line.strip()))
        for where, token in found:
            if API_TOKEN.fullmatch(token) is None:
                raise ValueError(f"{where}: not an API token: {API_TOKEN_RULE}")
        return [token for _, token in found]

    @property
    def worker_threads(self) -> int:
        """Messages a worker runs at once: together they hold `concurrency` jobs."""
        return -(-self.concurrency // self.jobs_per_message)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.result_backend:
            object.__setattr__(self, "result_backend", self.broker_url)
        if self.visibility_timeout_s <= self.job_deadline_s + self.read_timeout_s:
            raise ValueError(
                "MIRRORQ_VISIBILITY_TIMEOUT_S must exceed MIRRORQ_JOB_DEADLINE_S + "
                "MIRRORQ_READ_TIMEOUT_S, or a job still running would be handed to a second worker"
            )
        return self


class EmulatorSettings(BaseSettings):
    """Settings of `mirrorq emulator` (prefix `MIRRORQ_EMULATOR_`); CLI flags override them."""

    model_config = SettingsConfigDict(
        env_prefix="MIRRORQ_EMULATOR_", env_file=".env", extra="ignore"
    )

    host: str = "127.0.0.1"
    port: int = Field(default=5090, ge=0, le=65535)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    drop_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_ms: float = Field(default=0.0, ge=0.0)
    # Token bucket per action; 0 turns throttling off. EC2's default for mutating
    # actions is a bucket of 50 refilled at 5/s.
    throttle_rate: float = Field(default=0.0, ge=0.0)
    throttle_burst: int = Field(default=50, ge=1)
    # Seed for the fault dice, so a run with faults can be replayed exactly.
    seed: int | None = None
    # SQS queue (served by the emulator itself) that gets the EventBridge events EC2 would
    # send: instance state changes and CloudTrail API calls. Unset: no events.
    events_queue: str | None = Field(default=None, pattern=SQS_QUEUE_NAME)
    # The shortest AssumeRole DurationSeconds accepted. AWS's is 900; a lab sets a few
    # seconds so that tests see credentials expire and be refreshed.
    sts_min_duration: int = Field(default=900, ge=1, le=3600)
    # Every AssumeRole's credentials last at most this many seconds, whatever was asked
    # (botocore will not send a DurationSeconds under 900). Unset: as asked.
    sts_lifetime: int | None = Field(default=None, ge=1, le=3600)

    def overridden(self, **flags: Any) -> EmulatorSettings:
        """These settings with the command line's flags (those given) on top, validated."""
        given = {k: v for k, v in flags.items() if v is not None}
        return EmulatorSettings.model_validate({**self.model_dump(), **given})


def _text_lines(path: Path) -> list[str]:
    """A text file's lines; bytes that are not UTF-8 are a ValueError naming the line. A byte
    order mark (Notepad's, PowerShell 5's "UTF-8") is not part of the first line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()


@lru_cache(maxsize=1)
def get_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings()
