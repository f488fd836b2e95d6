"""Running the app under uvicorn, with limits on slow and excess connections.

uvicorn bounds idle keep-alive connections but gives a client unlimited time to send its
request: 200 connections dribbling header bytes hold 200 sockets for as long as they like.
``RequestDeadlineH11`` (uvicorn's h11 protocol plus one timer) closes a connection whose
request — headers and body — has not fully arrived ``request_read_timeout_s`` seconds after the
connection opened or after the request's first byte; between requests uvicorn's keep-alive
timeout applies. ``limit_concurrency`` caps open connections and requests (uvicorn answers 503
past it): keep it well above the expected load, and limit connections per client at the load
balancer.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from rerankit.server.settings import ServerSettings


class RequestDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol; a request must arrive whole within ``request_read_timeout_s``."""

    request_read_timeout_s = 30.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a new connection must bring its first request in time

    def data_received(self, data: bytes) -> None:
        if self._deadline is None:  # the first bytes of a request on a kept-alive connection
            self._arm()
        super().data_received(data)
        if self.conn.their_state is h11.DONE:  # the whole request is in: no deadline while answering
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_read_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        # IDLE: the headers are not complete yet; SEND_BODY: the body is still coming.
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()


def run(app, settings: ServerSettings, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` until interrupted."""
    import uvicorn

    protocol = type(
        "RequestDeadlineH11",
        (RequestDeadlineH11,),
        {"request_read_timeout_s": settings.request_read_timeout_s},
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        http=protocol,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_s,
        log_level="info",
    )
