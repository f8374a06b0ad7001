"""A deadline for each request's head. uvicorn has none (its keep-alive timeout is cancelled by
the first byte a client sends), so a client that connects and trickles, or never finishes, a
request line and headers would hold its connection for as long as it likes. Nor does it bound
the body of a request it has already answered (a 401 sent before the body was read): that
connection can never carry another request, and is closed on the same deadline."""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class _HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose next request's head is not all in
    `head_timeout_s` after the connection opened or its previous response ended. Once a head
    is in, the deadline is off while its request is served: a slow body the API is reading is
    the proxy's to time out, a long `?wait=` is fine. Once it is answered, the rest of a body the
    API did not read counts as waiting for the next head: the deadline runs again."""

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
        if not self._waiting_for_a_head():
            self._disarm()

    def _waiting_for_a_head(self) -> bool:
        """No request in progress: h11 leaves IDLE when it has parsed a whole request head
        (the Request event), and goes back once both sides are done. A request answered
        (our side DONE) while its body still comes holds nothing worth waiting for."""
        return self.conn.their_state is h11.IDLE or self.conn.our_state is h11.DONE

    def _expire(self) -> None:
        self._head_timer = None
        if self._waiting_for_a_head() and not self.transport.is_closing():
            self.transport.close()


def with_head_deadline(seconds: float) -> type[H11Protocol]:
    """The protocol class to give `uvicorn.run(http=...)`."""

    class HeadDeadlineProtocol(_HeadDeadline):
        head_timeout_s = seconds

    return HeadDeadlineProtocol
