"""How an onnxpack server runs on uvicorn: read deadlines uvicorn lacks, a bounded graceful
shutdown, and an end to the process when the model fails to load."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import FastAPI

from onnxpack.core import untrusted
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import graph_files

from .service import Service, exit_after, exit_unless_ready

HEADER_TIMEOUT_S = 10  # a request's headers must arrive within this (slow-loris clients are cut off)
BODY_TIMEOUT_S = 30  # and its body within this after them


def _timed_protocol() -> type:
    """uvicorn's httptools protocol with read deadlines, which uvicorn lacks: a connection that sends
    its headers (or body) too slowly gets 408 and is closed, so slow clients cannot hold the server."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class TimedProtocol(HttpToolsProtocol):
        # One timer per connection: a request moves its deadline three times, and a float store
        # costs less CPU than cancelling and scheduling a timer. A timer that fires before the
        # deadline (it moved later) sets itself again; one set for later than a new, earlier
        # deadline is replaced.
        _due: float | None = None
        _timer: asyncio.TimerHandle | None = None

        def _expect(self, seconds: float | None) -> None:
            self._due = self.loop.time() + seconds if seconds else None
            if self._due is not None and (self._timer is None or self._timer.when() > self._due):
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self.loop.call_at(self._due, self._check)

        def _check(self) -> None:
            self._timer = None
            if self._due is None:
                return
            if self.loop.time() < self._due:  # moved later since this timer was set
                self._timer = self.loop.call_at(self._due, self._check)
                return
            self._too_slow()

        def _too_slow(self) -> None:
            if not self.transport.is_closing():
                body = b'{"error": "the request came too slowly"}'
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._expect(HEADER_TIMEOUT_S)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._expect(HEADER_TIMEOUT_S)

        def on_headers_complete(self) -> None:
            self._expect(BODY_TIMEOUT_S)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._expect(None)
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._expect(None)
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

    return TimedProtocol


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False) -> None:
    """Serve until SIGINT or SIGTERM: uvicorn then stops accepting connections, finishes the
    requests in flight and runs the lifespan's shutdown, which drains the batcher. A model call that
    never returns cannot hold the process: `grace_s` after the signal it exits anyway. A model that
    fails to load ends the server with that one line (OnnxpackError), as Triton's --exit-on-error."""
    import uvicorn

    service: Service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                threading.Thread(target=exit_after, args=(service.config.grace_s + 2,), daemon=True).start()
            super().handle_exit(sig, frame)

    server = Server(uvicorn_config(app, host, port, access_log))
    service.on_failure = lambda: setattr(server, "should_exit", True)
    # The warm-up is a graph's first run, as the probe's is: the same limit, which grows with the graph.
    size = sum(f.stat().st_size for f in graph_files(service.package.variant_path(service.config.variant)))
    threading.Thread(target=exit_unless_ready, args=(service, untrusted.probe_timeout(size)), daemon=True).start()
    server.run()
    if service.failed:
        raise OnnxpackError(f"could not serve {service.package.root}: {service.failed}")


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False,
                   log_level: str = "info") -> Any:
    """How every onnxpack server runs on uvicorn: read deadlines, and a bounded graceful shutdown."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, access_log=access_log, http=_timed_protocol(),
                          timeout_graceful_shutdown=app.state.service.config.grace_s, log_level=log_level)
