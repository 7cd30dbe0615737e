"""Asks a Streams server's gRPC health service whether it is SERVING.

Exit code 0 when SERVING, 1 otherwise (unreachable, NOT_SERVING, timeout,
a certificate that does not verify): the container image's HEALTHCHECK.
Usage::

    python -m streams.healthcheck [--target HOST:PORT] [--service NAME] [--timeout S]
                                  [--tls-ca FILE] [--tls-server-name NAME]
                                  [--tls-cert FILE --tls-key FILE]

It reads the server's own environment, so the image needs no arguments: the
target defaults to STREAMS_LISTEN's port on 127.0.0.1 (the server may listen
on 0.0.0.0 inside a container), and when STREAMS_TLS_CERT is set it speaks TLS,
trusting that very certificate (or STREAMS_HEALTHCHECK_CA) and checking the
name the certificate is for (or STREAMS_HEALTHCHECK_SERVER_NAME), since the
certificate is seldom issued for 127.0.0.1. Under mutual TLS
(STREAMS_TLS_CLIENT_CA) it presents STREAMS_HEALTHCHECK_CERT and _KEY. The
health service needs no bearer token.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def default_target(environ: dict[str, str]) -> str:
    listen = environ.get("STREAMS_LISTEN", "127.0.0.1:50051")
    return f"127.0.0.1:{listen.rsplit(':', 1)[1]}"


@dataclass(frozen=True, slots=True)
class Tls:
    """How to reach a TLS server: the roots to trust, the name to check, and
    the client certificate to present (mutual TLS)."""

    ca: Path
    server_name: str | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )

    def name_of(self, target: str, timeout: float) -> str:
        """The name to check: given, or the first one the server's certificate
        (verified against ``ca``) is issued for."""
        if self.server_name:
            return self.server_name
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # finding the name is the point
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # ca may be the leaf itself
        context.load_verify_locations(cafile=str(self.ca))
        context.set_alpn_protocols(["h2"])
        if self.cert is not None:
            context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        host, _, port = target.rpartition(":")
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw) as tls,
        ):
            peer: dict[str, Any] = dict(tls.getpeercert() or {})
        names = [
            value for kind, value in peer.get("subjectAltName", ()) if kind in ("DNS", "IP Address")
        ]
        names += [
            value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"
        ]
        if not names:
            raise ssl.SSLError("the server's certificate names no host")
        # A wildcard matches any one label.
        return names[0].replace("*", "healthcheck", 1)


def tls_from(args: argparse.Namespace, environ: dict[str, str]) -> Tls | None:
    """TLS settings from the flags, else from the server's environment."""
    ca = args.tls_ca or environ.get("STREAMS_HEALTHCHECK_CA") or environ.get("STREAMS_TLS_CERT")
    if not ca:
        return None
    cert = args.tls_cert or environ.get("STREAMS_HEALTHCHECK_CERT")
    key = args.tls_key or environ.get("STREAMS_HEALTHCHECK_KEY")
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if cert is None and environ.get("STREAMS_TLS_CLIENT_CA"):
        raise ValueError(
            "the server requires client certificates (STREAMS_TLS_CLIENT_CA): set "
            "STREAMS_HEALTHCHECK_CERT and STREAMS_HEALTHCHECK_KEY (or --tls-cert, --tls-key)"
        )
    name = args.tls_server_name or environ.get("STREAMS_HEALTHCHECK_SERVER_NAME")
    return Tls(Path(ca), name, Path(cert) if cert else None, Path(key) if key else None)


def check(target: str, service: str = "", timeout: float = 3.0, tls: Tls | None = None) -> bool:
    """True when the health service at ``target`` says ``service`` is SERVING."""
    try:
        if tls is None:
            channel = grpc.insecure_channel(target)
        else:
            name = tls.name_of(target, timeout)
            options = [("grpc.ssl_target_name_override", name)]
            channel = grpc.secure_channel(target, tls.credentials(), options)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        print(f"{target}: TLS: {exc}", file=sys.stderr)
        return False
    with channel:
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
    environ = dict(os.environ)
    parser = argparse.ArgumentParser(
        prog="python -m streams.healthcheck",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", default=default_target(environ))
    parser.add_argument(
        "--service", default="", help='"" (the server) or streams.v1.StreamsService'
    )
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument(
        "--tls-ca",
        help="PEM roots to trust: speak TLS [STREAMS_HEALTHCHECK_CA, else STREAMS_TLS_CERT]",
    )
    parser.add_argument(
        "--tls-server-name",
        help="the name the certificate must be for "
        "[STREAMS_HEALTHCHECK_SERVER_NAME, else the certificate's own]",
    )
    parser.add_argument(
        "--tls-cert", help="client certificate (mutual TLS) [STREAMS_HEALTHCHECK_CERT]"
    )
    parser.add_argument("--tls-key", help="its private key [STREAMS_HEALTHCHECK_KEY]")
    args = parser.parse_args(argv)
    try:
        tls = tls_from(args, environ)
    except ValueError as exc:
        print(f"streams.healthcheck: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0 if check(args.target, args.service, args.timeout, tls) else 1)


if __name__ == "__main__":
    main()
