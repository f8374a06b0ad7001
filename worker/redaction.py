"""No credential, session token or signature in any log line, at any level.

botocore at DEBUG prints each request's headers (the access key id inside `Authorization`,
`X-Amz-Security-Token`), the canonical request and the signature. Every log record made in
a mirrorq process passes through `RedactSecrets` (installed as the record factory, so no
handler or logger can be missed): the patterns below, and the process's own credentials by
value (its default ones, and every set of a role it assumes, as each arrives: worker/roads.py;
its Redis and Sentinel passwords, however short, quoted and decoded), and any URL's userinfo
password, wherever they appear, become `***`.

A job's STS ExternalId is not a secret, but no log line carries it either (README): the value
of any `ExternalId` or `external_id` key (a dict's or a keyword's repr, JSON, a query string:
Celery's `received` line prints a message's kwargs, botocore at DEBUG the AssumeRole request)
is masked, and each ExternalId (of 8 characters or more) a role is assumed with is remembered
by value (worker/roads.py). worker/logs.py masks such a key's value in every field of a JSON line.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from config import Settings

MASK = "***"
# A key that names an STS ExternalId: `ExternalId` (STS's, botocore's), `external_id` (ours).
EXTERNAL_ID_KEY = re.compile(r"(?i:external_?id)")
_PATTERNS = [
    # A job's ExternalId by its key, quoted (a repr, JSON): everything up to the closing quote
    # (STS takes `,` `=` `/` `:` `@` `+` in one, and never a quote)...
    re.compile(r"(\b(?i:external_?id)['\"]?\s*[:=]\s*b?(['\"]))[^'\"]*"),
    # ... or bare (a query string, `key=value` text): up to `&` or a blank.
    re.compile(r"(\b(?i:external_?id)\s*=\s*)(?!b?['\"])[^\s&'\"]+"),
    # Authorization: AWS4-HMAC-SHA256 Credential=AKID/date/region/service/aws4_request
    re.compile(r"(Credential=)[^/\s,'\"]+"),
    # Authorization: ..., Signature=<hex>; and botocore.auth's "Signature:\n<hex>"
    re.compile(r"(Signature[=:]\s*)[0-9a-fA-F]{16,}"),
    # The session token as a header (dict repr, canonical request line) or query parameter.
    re.compile(r"((?i:x-amz-security-token)['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,}&]+"),
    # Credentials by name, as a dict, an env line or a config file would hold them.
    re.compile(
        r"((?i:aws_access_key_id|aws_secret_access_key|aws_session_token|accesskeyid|"
        r"secretaccesskey|sessiontoken|secret_key|access_key|token)['\"]?\s*[:=]\s*b?['\"]?)"
        r"[^'\"\s,}]+"
    ),
    # STS's answer to AssumeRole, as botocore prints its body at DEBUG (before the set is
    # remembered by value).
    re.compile(r"(<(?:AccessKeyId|SecretAccessKey|SessionToken)>)[^<]+"),
    # A URL's userinfo password (redis://user:password@host, as kombu prints its failover
    # URLs), whatever the scheme, configured here or not.
    re.compile(r"(://[^:/@\s]*:)[^@\s]+(?=@)"),
    # Access key ids, wherever they turn up.
    re.compile(r"()\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|APKA)[A-Z0-9]{12,}\b"),
]


class RedactSecrets:
    """Masks secrets in log records; `remember()` adds this process's own credentials."""

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def remember(self, *secrets: str | None, shortest: int = 4) -> None:
        """Mask these values wherever they appear; those under `shortest` characters are not
        remembered (0 for a value configured as a secret, which is masked however short)."""
        with self._lock:
            self._known |= {s for s in secrets if s and len(s) >= max(shortest, 1)}

    def redact(self, text: str) -> str:
        for secret in sorted(self._known, key=len, reverse=True):
            text = text.replace(secret, MASK)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record in place (its message, and its traceback text); keep it."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it; don't make it worse
            return True
        if self.redact(message) != message:
            self._redact_parts(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True

    def _redact_parts(self, record: logging.LogRecord) -> None:
        """Redact the format and each argument, keeping the arguments' shape: formatters that
        read them (uvicorn's access log unpacks five) still can. An argument whose text holds
        a secret becomes that text, redacted. Should a secret still show (one split between the
        format and an argument), the message is made final, with no arguments left."""
        if isinstance(record.msg, str):
            record.msg = self.redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._redact_arg(v) for k, v in record.args.items()}
        message = record.getMessage()
        if self.redact(message) != message:
            record.msg, record.args = self.redact(message), ()

    def _redact_arg(self, arg: Any) -> Any:
        if isinstance(arg, int | float | bool | type(None)):
            return arg
        text = str(arg)
        redacted = self.redact(text)
        return arg if redacted == text else redacted


REDACTOR = RedactSecrets()
_installed = False


def install() -> None:
    """Route every log record of this process through the redactor (idempotent)."""
    global _installed  # noqa: PLW0603 - one record factory per process
    if _installed:
        return
    make_record = logging.getLogRecordFactory()

    def redacted(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        REDACTOR.filter(record)
        return record

    logging.setLogRecordFactory(redacted)
    _installed = True


async def redact_credentials(credentials: Any) -> None:
    """Remember aiobotocore credentials by value (a refreshed token is still caught by the
    patterns, wherever botocore prints it)."""
    frozen = await credentials.get_frozen_credentials()
    REDACTOR.remember(frozen.access_key, frozen.secret_key, frozen.token)


def redact_redis_passwords(settings: Settings, redactor: RedactSecrets = REDACTOR) -> None:
    """Remember the Redis and Sentinel passwords of this process's settings by value (a URL's
    password, MIRRORQ_SENTINEL_PASSWORD), however short, each as configured and %-decoded and
    the Sentinel one %-quoted too: kombu and redis-py may print a URL (kombu's failover URLs
    carry the password as quoted) or their connection options (decoded) in an error."""
    secrets: list[str] = []
    if settings.sentinel_password:
        password = settings.sentinel_password.get_secret_value()
        secrets += [password, quote(password, safe="")]
    for url in (settings.broker_url, settings.result_backend):
        for part in url.split(";"):
            with contextlib.suppress(ValueError):
                quoted = urlsplit(part.strip()).password or ""
                secrets += [quoted, unquote(quoted)]
    redactor.remember(*secrets, shortest=0)
