"""A header read timeout for uvicorn's HTTP protocol (slowloris).

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but a client that
sends a request's headers a byte at a time keeps its connection (and a slot of the server)
forever: the keep-alive timer stops at the first byte and nothing else is timed until the
headers are complete. `http_protocol(header_timeout)` is uvicorn's own protocol class (httptools
when installed, else h11) with one timer: armed when a connection opens and when a response
ends, it closes the connection unless a new request's headers were complete in time (with a
408 when part of a request had arrived). The body read timeout is in bot/web/middleware.py (an ASGI concern).

Use: ``uvicorn.Config(app, http=http_protocol(settings.http_header_timeout), ...)`` in one process,
``http=PROTOCOL_PATH`` with uvicorn's workers (each worker's create_app calls configure()).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("bot.web")

TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: 26\r\nconnection: close\r\n\r\nrequest headers too slow\r\n")


def _base_protocol() -> type:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn without httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


HEADER_TIMEOUT = 10.0  # seconds; set from the settings by configure() (create_app calls it in every process)


def configure(header_timeout: float) -> None:
    global HEADER_TIMEOUT
    HEADER_TIMEOUT = float(header_timeout)


class HeaderTimeoutProtocol(_base_protocol()):  # type: ignore[misc]
    """uvicorn's HTTP protocol with a timeout for each request's headers (HEADER_TIMEOUT). A class of
    this module, so that uvicorn's worker processes can import it by name
    (``http="bot.web.timeouts:HeaderTimeoutProtocol"``)."""

    _header_timer: Any = None
    _timed_cycle: Any = None
    _partial = False  # bytes of a request arrived since the timer was armed

    def data_received(self, data: bytes) -> None:
        self._partial = True
        super().data_received(data)

    def connection_made(self, transport) -> None:  # noqa: ANN001
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request on this connection

    def connection_lost(self, exc) -> None:  # noqa: ANN001
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._timed_cycle = self.cycle  # a new request replaces self.cycle once its headers are in
        self._partial = False
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.cycle is not self._timed_cycle or self.transport.is_closing():
            return  # a request arrived in time
        if self.cycle is not None and not self.cycle.response_complete:
            return  # still answering the previous request (pipelining)
        if not self._partial:  # idle: close quietly (a 408 could be taken as the next request's answer)
            self.transport.close()
            return
        client = "%s:%s" % self.client if self.client else "-"
        log.info("closed a connection from %s: no complete request headers within %.0f s", client, HEADER_TIMEOUT)
        try:
            self.transport.write(TIMEOUT_RESPONSE)
        finally:
            self.transport.close()


PROTOCOL_PATH = "bot.web.timeouts:HeaderTimeoutProtocol"


def http_protocol(header_timeout: float) -> type:
    """The protocol class, its timeout set (one process: uvicorn.Config(http=...))."""
    configure(header_timeout)
    return HeaderTimeoutProtocol
