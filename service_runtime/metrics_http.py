"""The Prometheus scrape endpoint of a process, served from the registry its composition root owns."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


class MetricsServer:
    """`/metrics` over HTTP on a background thread; `port` is the bound port (0 picks a free one)."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> None:
        self._registry = registry
        self._host = host
        self._requested_port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port

    def start(self) -> None:
        """Bind and start serving."""
        self._server, self._thread = start_http_server(self._requested_port, self._host, self._registry)
        self.port = self._server.server_port

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
