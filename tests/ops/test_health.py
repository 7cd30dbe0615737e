"""grpc.health.v1.Health on the serving port: SERVING once started, NOT_SERVING
as soon as shutdown starts."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.inproc import InProcessServer

from .helpers import NOT_SERVING, SERVICE, SERVING, health_status


def test_both_services_serving_once_started(inproc: InProcessServer) -> None:
    assert health_status(inproc.channel, "") == SERVING
    assert health_status(inproc.channel, SERVICE) == SERVING


def test_unknown_service_is_not_found(inproc: InProcessServer) -> None:
    with pytest.raises(grpc.RpcError) as error:
        health_status(inproc.channel, "no.such.Service")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("service", ["", SERVICE])
def test_watch_sees_not_serving_as_soon_as_shutdown_starts(
    inproc: InProcessServer, service: str
) -> None:
    health = health_pb2_grpc.HealthStub(inproc.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=30)
    assert next(watch).status == SERVING
    seen: list[tuple[int, float]] = []

    def read() -> None:
        try:
            for reply in watch:
                seen.append((reply.status, time.monotonic()))
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.monotonic()
    # A long grace: the open Watch holds the stop until we cancel it, so what the
    # watcher sees happens during shutdown, not after the server is gone.
    inproc.begin_stop(grace=20)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    watch.cancel()
    reader.join(5)
    assert seen, "the Watch stream saw no status change when shutdown started"
    status, when = seen[0]
    assert status == NOT_SERVING
    assert when - started < 2.0
