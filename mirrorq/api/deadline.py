"""A deadline for each request's head. uvicorn has none (its keep-alive timeout is cancelled by
the first byte a client sends), so a client that connects and trickles, or never finishes, a
request line and headers would hold its connection for as long as it likes."""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class _HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose next request's head is not all in
    `head_timeout_s` after the connection opened or its previous response ended. Once a head
    is in, the deadline is off: a slow body is the proxy's to time out, a long `?wait=` is fine."""

    head_timeout_s: float
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._disarm_once_head_is_in()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next request's cycle, if it can
        self._arm()
        self._disarm_once_head_is_in()  # a pipelined request's head may be in already

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _disarm_once_head_is_in(self) -> None:
        # h11 leaves IDLE when it has parsed a whole request head (the Request event).
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def _expire(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def with_head_deadline(seconds: float) -> type[H11Protocol]:
    """The protocol class to give `uvicorn.run(http=...)`."""

    class HeadDeadlineProtocol(_HeadDeadline):
        head_timeout_s = seconds

    return HeadDeadlineProtocol
