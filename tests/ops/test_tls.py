"""TLS (--tls-cert/--tls-key) and mutual TLS (--tls-client-ca)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.inproc import InProcessServer
from tests.support.process import ServerProcess

from .helpers import SERVICE, SERVING, Pki, health_status, produce, rpc_code

QUICK = 5.0


def peek_code(channel: grpc.Channel) -> grpc.StatusCode:
    stub = pb_grpc.StreamsServiceStub(channel)
    return rpc_code(lambda: stub.Peek(pb.PeekRequest(space="tls"), timeout=QUICK))


@pytest.fixture
def tls_server(tmp_path: Path, pki: Pki) -> Iterator[InProcessServer]:
    with InProcessServer(
        tmp_path / "data", tls_cert=pki.server_cert, tls_key=pki.server_key
    ) as server:
        yield server


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_tls_client_works(tls_server: InProcessServer, pki: Pki, host: str) -> None:
    target = f"{host}:{tls_server.port}"
    with grpc.secure_channel(target, pki.channel_credentials()) as channel:
        stub = pb_grpc.StreamsServiceStub(channel)
        ack = produce(stub, "tls", "s", [b"secret"])
        assert ack.last_position >= 1
        assert peek_code(channel) == grpc.StatusCode.OK
        assert health_status(channel, SERVICE) == SERVING


def test_a_plaintext_client_fails(tls_server: InProcessServer) -> None:
    with grpc.insecure_channel(tls_server.target) as channel:
        assert peek_code(channel) == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_does_not_trust_the_ca_fails(tls_server: InProcessServer, pki: Pki) -> None:
    credentials = pki.channel_credentials(root=pki.rogue_ca)
    with grpc.secure_channel(tls_server.target, credentials) as channel:
        assert peek_code(channel) == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    """The real process, configured by flags."""
    tmp = tmp_path_factory.mktemp("mtls")
    server = ServerProcess(
        tmp / "data",
        flags=[
            "--tls-cert", str(pki.server_cert),
            "--tls-key", str(pki.server_key),
            "--tls-client-ca", str(pki.ca),
        ],
    )  # fmt: skip
    with server.start():
        yield server
        assert server.stop() == 0


def test_mutual_tls_accepts_a_client_certificate_of_the_ca(mtls_server: ServerProcess, pki: Pki):
    with grpc.secure_channel(mtls_server.target, pki.channel_credentials("good")) as channel:
        produce(pb_grpc.StreamsServiceStub(channel), "tls", "s", [b"x"])
        assert peek_code(channel) == grpc.StatusCode.OK


@pytest.mark.parametrize("client", [None, "rogue"], ids=["no-certificate", "other-ca"])
def test_mutual_tls_refuses_other_clients(
    mtls_server: ServerProcess, pki: Pki, client: str | None
) -> None:
    with grpc.secure_channel(mtls_server.target, pki.channel_credentials(client)) as channel:
        assert peek_code(channel) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_plaintext(mtls_server: ServerProcess) -> None:
    with grpc.insecure_channel(mtls_server.target) as channel:
        assert peek_code(channel) == grpc.StatusCode.UNAVAILABLE
