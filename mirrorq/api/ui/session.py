"""The dashboard's login: an API token exchanged once for a signed, expiring session cookie.

The cookie carries no token: a random session id and the fingerprint of the token that
opened it (an HMAC, so the token cannot be read back from it), signed and timestamped with
itsdangerous under a key derived from the API's tokens. Every API process with the same
tokens accepts the others' sessions; changing the tokens ends every session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "mirrorq_ui"
_SALT = "mirrorq dashboard session"


@dataclass(frozen=True)
class UiSession:
    sid: str  # random: two logins with one token are two sessions
    fingerprint: str  # of the token that opened it


class Sessions:
    """Issue and check session cookies for the API's tokens."""

    def __init__(self, tokens: list[str], ttl_s: int) -> None:
        if not tokens:
            raise ValueError("no API token: the dashboard does not run open")
        self.ttl_s = ttl_s
        # One key for the set of tokens, derived rather than random so that every API process
        # behind one proxy signs alike.
        key = hmac.new(_SALT.encode(), "\n".join(sorted(tokens)).encode(), hashlib.sha256)
        self._key = key.digest()
        self._tokens = [t.encode() for t in tokens]
        self._fingerprints = {self._fingerprint(t) for t in self._tokens}
        self._serializer = URLSafeTimedSerializer(self._key, salt=_SALT)

    def _fingerprint(self, token: bytes) -> str:
        return hmac.new(self._key, token, hashlib.sha256).hexdigest()[:32]

    def login(self, given: str) -> str | None:
        """A new session's cookie value for a valid token; None otherwise. Every token is
        compared in constant time, whatever matches first (as mirrorq/api/auth.py does)."""
        candidate = given.strip().encode()
        matched: bytes | None = None
        for token in self._tokens:
            if hmac.compare_digest(candidate, token):
                matched = token
        if matched is None:
            return None
        session = {"sid": secrets.token_urlsafe(16), "fp": self._fingerprint(matched)}
        return str(self._serializer.dumps(session))

    def check(self, cookie: str | None) -> UiSession | None:
        """The session a cookie holds, if its signature is good, it is not older than the
        session lifetime, and the token that opened it is still one of the API's."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.ttl_s)
        except BadSignature:  # SignatureExpired is one
            return None
        if not isinstance(data, dict) or data.get("fp") not in self._fingerprints:
            return None
        return UiSession(str(data.get("sid", "")), str(data["fp"]))
