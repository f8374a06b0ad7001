"""Fake credentials, a session token and the shape of a request signature, for the tests that
look for secrets in logs, results and errors (none of these may ever show)."""

from __future__ import annotations

import re

ACCESS_KEY_ID = "AKIAMIRRORQTEST0SECRET"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYmirrorqSECRET"  # noqa: S105 - a fake
SESSION_TOKEN = "FwoGZXIvYXdzEMIRRORQSESSIONTOKENz0LxhVyeZ+very/long/token=="  # noqa: S105
SIGNATURE = re.compile(r"[Ss]ignature[=:\s\\n]+[0-9a-f]{64}")
