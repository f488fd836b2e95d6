"""Running the app under uvicorn, with limits on slow and excess connections.

uvicorn bounds idle keep-alive connections but gives a client unlimited time to send its
request: 200 connections dribbling header bytes hold 200 sockets for as long as they like.
``RequestDeadlineH11`` (uvicorn's h11 protocol plus one timer) closes a connection whose
request — headers and body — has not fully arrived ``request_read_timeout_s`` seconds after the
connection opened or its previous response ended. ``limit_concurrency`` caps connections
(uvicorn answers 503 past it).
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
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.request_read_timeout_s, self._expire)

    def _expire(self) -> None:
        # IDLE: not a byte of the next request yet; SEND_BODY: headers or body still coming.
        # DONE: the request is in and being answered, however long that takes.
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
