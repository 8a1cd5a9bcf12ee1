"""What operators and orchestrators read: ``/metrics`` (Prometheus), ``/health``
(JSON, 503 when the processor cannot do its job), ``/live`` and ``/ready``
(Kubernetes-style probes). Served on ``FC_METRICS_PORT`` by the processor, and
beside the API by ``fc-dev``."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from processor.health import Health
from processor.metrics import Metrics

log = logging.getLogger(__name__)


def add_ops_routes(app: FastAPI, metrics: Metrics, health: Health, alive: Callable[[], bool]) -> None:
    @app.get("/metrics", include_in_schema=False)
    def metrics_exposition() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    def health_report() -> JSONResponse:
        report = health.report()
        return JSONResponse(report, status_code=200 if report["status"] == "UP" else 503)

    @app.get("/live")
    def live() -> JSONResponse:
        """The process answers and its processing thread runs and moves on: no
        reason to restart it. A stall says where it is stuck."""
        stall = health.stall()
        ok = alive() and stall is None
        body = {"status": "UP" if ok else "DOWN"} | ({"reason": stall} if stall else {})
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/ready")
    def ready() -> JSONResponse:
        """Ready for its role: a standby is ready to take over, a leader is doing its job."""
        report = health.report()
        up = report["status"] == "UP" and alive()
        return JSONResponse({"status": "UP" if up else "DOWN", "role": report["role"]}, 200 if up else 503)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening, for uvicorn to serve on: bound
    at start, so that a port in use is a configuration error (``OSError``), and
    so that a client that connects once this returns is served."""
    family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError:
        listener.close()
        raise
    return listener


class OpsServer:
    """The ops endpoints on their own socket (``listen``), in a background thread."""

    def __init__(self, app: FastAPI, listener: socket.socket) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self._listener = listener
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [listener]}, name="ops-http", daemon=True
        )

    def __enter__(self) -> OpsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=5)
        self._listener.close()


def ops_app(metrics: Metrics, health: Health, alive: Callable[[], bool]) -> FastAPI:
    app = FastAPI(title="fc-stream-processor", docs_url=None, redoc_url=None, openapi_url=None)
    add_ops_routes(app, metrics, health, alive)
    return app
