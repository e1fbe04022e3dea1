"""The connections of `charrnn serve`: uvicorn's HTTP/1.1 protocol (h11) with what it lacks
against slow or stalled clients (a slowloris attack holds connections open by sending its
headers a byte at a time):

- a request's headers must arrive whole within `header_timeout` seconds of the connection, or
  of the first byte after the last response on a kept-alive connection; else it is closed;
- at most `max_connections` are open: a new connection past that closes the one that has
  waited longest for its headers (a slow client), so a client that sends its request at once
  is always let in; with none waiting, the new one is closed.

The body has its own deadline in the app (`Limits.body_timeout`), and an idle kept-alive
connection closes after uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from charrnn.extras import require


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1000
    header_timeout: float = 10.0  # seconds


def guarded_protocol(limits: ConnectionLimits) -> type:
    """A uvicorn HTTP protocol class (`uvicorn.Config(http=...)`) that enforces `limits`; each
    class keeps the connections waiting for headers of one server."""
    h11_impl = require("uvicorn.protocols.http.h11_impl", "serve")
    waiting: dict[Any, float] = {}  # connection -> when it began waiting for a request's headers

    class GuardedH11Protocol(h11_impl.H11Protocol):  # type: ignore[name-defined, misc]
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                slowest = min(waiting, key=waiting.__getitem__, default=None)
                if slowest is None:
                    transport.close()
                    return
                slowest._headers_arrived()  # out of the table now: the next eviction picks another
                slowest.transport.close()
            self._wait_for_headers()

        def data_received(self, data: bytes) -> None:
            if self not in waiting and (self.cycle is None or self.cycle.response_complete):
                self._wait_for_headers()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._headers_arrived()

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_arrived()
            super().connection_lost(exc)

        def _wait_for_headers(self) -> None:
            waiting[self] = self.loop.time()
            self._timer = self.loop.call_later(limits.header_timeout, self._too_slow)

        def _headers_arrived(self) -> None:
            waiting.pop(self, None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self) -> None:
            if self in waiting and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol
