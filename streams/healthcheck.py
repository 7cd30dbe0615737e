"""Asks a Streams server's gRPC health service whether it is SERVING.

Exit code 0 when SERVING, 1 otherwise (unreachable, NOT_SERVING, timeout):
the container image's HEALTHCHECK. Usage::

    python -m streams.healthcheck [--target HOST:PORT] [--service NAME] [--timeout S]

The target defaults to STREAMS_LISTEN's port on 127.0.0.1 (the server may
listen on 0.0.0.0 inside a container).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def default_target(environ: dict[str, str]) -> str:
    listen = environ.get("STREAMS_LISTEN", "127.0.0.1:50051")
    return f"127.0.0.1:{listen.rsplit(':', 1)[1]}"


def check(target: str, service: str = "", timeout: float = 3.0) -> bool:
    """True when the health service at ``target`` says ``service`` is SERVING."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            print(f"{target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m streams.healthcheck", description=__doc__)
    parser.add_argument("--target", default=default_target(dict(os.environ)))
    parser.add_argument(
        "--service", default="", help='"" (the server) or streams.v1.StreamsService'
    )
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    sys.exit(0 if check(args.target, args.service, args.timeout) else 1)


if __name__ == "__main__":
    main()
