"""TLS (--tls-cert/--tls-key) and mutual TLS (--tls-client-ca)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams.auth import TokenAuth
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.inproc import InProcessServer
from tests.support.process import ServerProcess

from .helpers import (
    SERVICE,
    SERVING,
    Pki,
    health_status,
    produce,
    rpc_code,
    run_python,
    write_tokens,
)

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


# -- the image's health check against a TLS server -----------------------------------


def healthcheck(port: int, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m streams.healthcheck`` as the image runs it: no target, the
    server's environment (STREAMS_LISTEN and the TLS variables)."""
    return run_python(
        ["-m", "streams.healthcheck", *args], env={"STREAMS_LISTEN": f"0.0.0.0:{port}", **env}
    )


def server_env(pki: Pki) -> dict[str, str]:
    return {"STREAMS_TLS_CERT": str(pki.server_cert), "STREAMS_TLS_KEY": str(pki.server_key)}


@pytest.fixture
def tls_auth_server(tmp_path: Path, pki: Pki) -> Iterator[InProcessServer]:
    """TLS and bearer tokens: the health service needs neither a token nor a
    client certificate."""
    grant = {"token": "t", "spaces": ["*"], "access": ["read"]}
    tokens = write_tokens(tmp_path / "tokens.json", [grant])
    with InProcessServer(
        tmp_path / "data", auth=TokenAuth.load(tokens), tls_cert=pki.server_cert,
        tls_key=pki.server_key,
    ) as server:  # fmt: skip
        yield server


@pytest.mark.parametrize("service", ["", SERVICE])
def test_the_health_check_speaks_tls_from_the_servers_environment(
    tls_auth_server: InProcessServer, pki: Pki, service: str
) -> None:
    done = healthcheck(tls_auth_server.port, server_env(pki), "--service", service)
    assert done.returncode == 0, done.stderr
    assert "SERVING" in done.stdout
    # Trusting the CA instead of the certificate itself works too.
    trust_ca = {**server_env(pki), "STREAMS_HEALTHCHECK_CA": str(pki.ca)}
    with_ca = healthcheck(tls_auth_server.port, trust_ca)
    assert with_ca.returncode == 0, with_ca.stderr


def test_the_health_check_refuses_a_server_it_cannot_verify(
    tls_server: InProcessServer, pki: Pki
) -> None:
    rogue = {**server_env(pki), "STREAMS_HEALTHCHECK_CA": str(pki.rogue_ca)}
    done = healthcheck(tls_server.port, rogue)
    assert done.returncode == 1
    assert "SERVING" not in done.stdout
    wrong_name = healthcheck(tls_server.port, server_env(pki), "--tls-server-name", "example.org")
    assert wrong_name.returncode == 1, wrong_name.stdout
    # And plaintext against TLS fails, as before.
    assert healthcheck(tls_server.port, {}).returncode == 1


def test_the_health_check_under_mutual_tls(mtls_server: ServerProcess, pki: Pki) -> None:
    env = {**server_env(pki), "STREAMS_TLS_CLIENT_CA": str(pki.ca)}
    without = healthcheck(mtls_server.port, env)
    assert without.returncode == 1
    assert "STREAMS_HEALTHCHECK_CERT" in without.stderr, without.stderr
    client = {"STREAMS_HEALTHCHECK_CERT": str(pki.client_cert),
              "STREAMS_HEALTHCHECK_KEY": str(pki.client_key)}  # fmt: skip
    done = healthcheck(mtls_server.port, {**env, **client})
    assert done.returncode == 0, done.stderr
    rogue = {"STREAMS_HEALTHCHECK_CERT": str(pki.rogue_cert),
             "STREAMS_HEALTHCHECK_KEY": str(pki.rogue_key)}  # fmt: skip
    assert healthcheck(mtls_server.port, {**env, **rogue}).returncode == 1
