"""EC2 Query-API errors as the emulator sends them: a code, a message and an HTTP status."""

from __future__ import annotations

import uuid
from xml.sax.saxutils import escape

_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    412: "Precondition Failed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class EC2Error(Exception):
    """An error answer from the emulated EC2 endpoint."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    @property
    def status_line(self) -> str:
        return f"{self.status} {_REASONS.get(self.status, 'Error')}"

    def to_xml(self) -> bytes:
        """The body EC2 sends, which botocore's ec2 parser turns into `ClientError`."""
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{escape(self.code)}</Code>"
            f"<Message>{escape(self.message)}</Message></Error></Errors>"
            f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
        ).encode()


def invalid_value(message: str) -> EC2Error:
    return EC2Error("InvalidParameterValue", message)


def throttled() -> EC2Error:
    return EC2Error("RequestLimitExceeded", "Request limit exceeded.", 503)


def dry_run_ok() -> EC2Error:
    return EC2Error("DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412)


STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
ELBV2_NAMESPACE = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"


class QueryError(EC2Error):
    """An error from a Query-protocol service other than EC2 (STS, Elastic Load Balancing v2):
    AWS's `ErrorResponse`, in that service's XML namespace (STS's unless said)."""

    def __init__(
        self, code: str, message: str, status: int = 400, namespace: str = STS_NAMESPACE
    ) -> None:
        super().__init__(code, message, status)
        self.namespace = namespace

    def to_xml(self) -> bytes:
        kind = "Receiver" if self.status >= 500 else "Sender"
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<ErrorResponse xmlns="{escape(self.namespace)}">'
            f"<Error><Type>{kind}</Type><Code>{escape(self.code)}</Code>"
            f"<Message>{escape(self.message)}</Message></Error>"
            f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
        ).encode()


def expired_token(namespace: str = STS_NAMESPACE) -> QueryError:
    """What STS, SQS and Elastic Load Balancing v2 answer a call signed with temporary
    credentials past their expiration (in `namespace`, the service's)."""
    return QueryError(
        "ExpiredToken", "The security token included in the request is expired", 403, namespace
    )


def request_expired() -> EC2Error:
    """What EC2 answers a call signed with temporary credentials past their expiration."""
    return EC2Error("RequestExpired", "Request has expired.", 400)
