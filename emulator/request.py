"""What an AWS request says about itself: the service, Region and account it is for, its action."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.iam.models import get_account_id_from

from emulator.wsgi import Environ

_CREDENTIAL_SCOPE = re.compile(
    r"Credential=(?P<key>[^/]+)/\d{8}/(?P<region>[a-z0-9-]+)/(?P<service>[a-z0-9-]+)/"
)


def region_of(environ: Environ) -> str:
    match = _CREDENTIAL_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    return match["region"] if match else "us-east-1"


ACCOUNT = "mirrorq.account"  # where the app puts the account it resolved for a request


def access_key_of(environ: Environ) -> str | None:
    match = _CREDENTIAL_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    return match["key"] if match else None


def account_of(environ: Environ) -> str:
    """The account moto serves a request in: an assumed role's (STS AssumeRole), else the default.

    The checks must read the backend moto will write to, or a session created with a role's
    credentials would be validated against another account's ENIs. moto finds the account of
    an access key the same way (`moto.core.responses.BaseResponse.current_account`): the
    `X-Moto-Account-Id` header, else the IAM backend holding the key (AssumeRole creates its
    temporary key in the role's account), else `DEFAULT_ACCOUNT_ID`.
    """
    resolved: str | None = environ.get(ACCOUNT)
    if resolved:
        return resolved
    header: str | None = environ.get("HTTP_X_MOTO_ACCOUNT_ID")
    if header:
        return header
    key = access_key_of(environ)
    return get_account_id_from(key) if key else DEFAULT_ACCOUNT_ID


def service_of(environ: Environ) -> str | None:
    """The AWS service a request is for: its SigV4 scope, else its JSON target, else None."""
    match = _CREDENTIAL_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match:
        return match["service"]
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("AmazonSQS."):
        return "sqs"
    return None


def query_action(body: bytes) -> str | None:
    return dict(parse_qsl(body.decode("utf-8", "replace"))).get("Action")


def sqs_action(environ: Environ, body: bytes) -> str | None:
    # botocore speaks SQS's JSON protocol (X-Amz-Target); older SDKs its Query protocol.
    target: str = environ.get("HTTP_X_AMZ_TARGET", "")
    return target.partition(".")[2] or query_action(body)
