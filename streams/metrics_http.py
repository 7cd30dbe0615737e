"""The metrics endpoint: ``/metrics`` (Prometheus text), ``/healthz`` (its own
small answer: 200 ``serving`` or 503 ``not serving``), 404 for anything else.

Example::

    server, thread = serve("127.0.0.1:9464", registry, serving=lambda: True)
    ...
    server.shutdown()
    server.server_close()
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client as prom
from prometheus_client.exposition import ThreadingWSGIServer

_TEXT = [("Content-Type", "text/plain; charset=utf-8")]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not logged."""


def app(
    registry: prom.CollectorRegistry, serving: Callable[[], bool]
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics = prom.make_wsgi_app(registry)

    def route(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            up = serving()
            start_response("200 OK" if up else "503 Service Unavailable", _TEXT)
            return [b"serving\n" if up else b"not serving\n"]
        start_response("404 Not Found", _TEXT)
        return [b"not found: /metrics serves the metrics, /healthz the health\n"]

    return route


def serve(
    listen: str, registry: prom.CollectorRegistry, serving: Callable[[], bool]
) -> tuple[WSGIServer, threading.Thread]:
    """Serves :func:`app` on ``listen`` (HOST:PORT, port 0 picks one) in a daemon
    thread; raises OSError when it cannot bind."""
    host, _, port = listen.rpartition(":")
    family, _, _, _, where = socket.getaddrinfo(
        host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    httpd = make_server(where[0], int(port), app(registry, serving), Server, _Quiet)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
    thread.start()
    return httpd, thread
