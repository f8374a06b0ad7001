"""Bearer tokens on every /v1 route, compared in constant time; the answer to a missing or
wrong token says nothing about which it was."""

from __future__ import annotations

import hmac

from fastapi import Request

from mirrorq.api.errors import ApiError


class Tokens:
    def __init__(self, tokens: list[str]) -> None:
        if not tokens:
            raise ValueError(
                "no API token: set MIRRORQ_API_TOKENS (comma-separated) or "
                "MIRRORQ_API_TOKENS_FILE (one a line); the API does not run open"
            )
        self._tokens = [t.encode() for t in tokens]

    def check(self, request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        candidate = given.strip().encode() if scheme.lower() == "bearer" else b""
        # Every token is compared, whatever matches first: the time taken tells nothing.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        if not matched:
            raise ApiError(401, "Unauthorized", "a valid bearer token is required")
