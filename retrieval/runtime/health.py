"""``GET /healthz``: whether this process works, for Docker, systemd or Kubernetes to restart one
that does not. 200 ``ok`` while it is healthy; 503 with the reason while a task of it keeps
failing (see `retrieval/supervisor.py`).

Served by the metrics server on ``METRICS_PORT``, or alone on ``HEALTH_PORT``; either way from a
thread of its own (prometheus_client's threaded WSGI server), so answering never waits for the
event loop, and never touches the database.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.exposition import ThreadingWSGIServer

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

HEALTH_PATH = "/healthz"


def not_found(_environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"not found; try /healthz\n"]


def with_health(
    problem: Callable[[], str | None], app: WSGIApplication = not_found
) -> WSGIApplication:
    """``app`` with ``/healthz`` answered first: 200 while ``problem()`` is None, else 503 with
    it."""

    def serve(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != HEALTH_PATH:
            return app(environ, start_response)
        why = problem()
        status = "200 OK" if why is None else "503 Service Unavailable"
        body = "ok\n" if why is None else f"unhealthy: {why}\n"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body.encode()]

    return serve


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass  # a probe every few seconds is no news


def serve(app: WSGIApplication, *, port: int, addr: str) -> WSGIServer:
    """``app`` on ``addr:port`` from a daemon thread, until `stop_serving`."""

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

    httpd = make_server(addr, port, app, Server, handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, name=f"http-{port}", daemon=True).start()
    return httpd


def stop_serving(httpd: WSGIServer) -> None:
    """Stop a server `serve` started (blocks up to half a second: call it off the loop)."""
    httpd.shutdown()
    httpd.server_close()
