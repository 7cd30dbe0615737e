"""Shared helpers of the operations tests: metrics scraping, TLS certificates,
token files, sockets (the servers are tests/support's).

Everything runs on loopback against real servers over real RocksDB.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.process import REPO_ROOT
from tests.support.waiting import wait_until

__all__ = ["REPO_ROOT", "wait_until"]  # re-exported for the ops tests

SERVICE = "streams.v1.StreamsService"
CALL_TIMEOUT = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- clients ---------------------------------------------------------------


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT)
    return int(reply.status)


def produce(
    stub: pb_grpc.StreamsServiceStub,
    space: str,
    segment: str,
    payloads: Iterable[bytes],
    *,
    call_metadata: Sequence[tuple[str, str]] | None = None,
    record_metadata: dict[str, str] | None = None,
) -> pb.ProduceResponse:
    records = [pb.RecordInput(payload=p, metadata=record_metadata or {}) for p in payloads]
    request = pb.ProduceRequest(
        space=space, writes=[pb.SegmentWrite(segment=segment, records=records)]
    )
    return stub.Produce(request, metadata=call_metadata, timeout=CALL_TIMEOUT)


def read_all(stub: pb_grpc.StreamsServiceStub, space: str, segment: str = "") -> list[pb.Record]:
    """Every stored record of a segment (or of the space when segment is empty)."""
    responses = stub.Consume(pb.ConsumeRequest(space=space, segment=segment), timeout=CALL_TIMEOUT)
    return [record for response in responses for record in response.records]


def rpc_code(call: Callable[[], Any]) -> grpc.StatusCode:
    """The status code ``call`` ends with (OK when it returns); drains streams."""
    try:
        result = call()
        if hasattr(result, "__next__"):
            for _ in result:
                pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def run_python(args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 30):
    """Runs ``python ARGS`` from the repo root with a STREAMS_*-free environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=clean,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- metrics -------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics; every sample by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str):
    """One sample's value; fails naming the metric when it is absent."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not exported; have {sorted({k[0] for k in samples})}"
    return samples[key]


# -- tokens ----------------------------------------------------------------------


def write_tokens(path: Path, tokens: list[dict[str, Any]]) -> Path:
    """Writes an --auth-tokens file atomically (a reader never sees half of it)."""
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"tokens": tokens}))
    partial.replace(path)
    return path


# -- TLS -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost, a client
    certificate signed by the CA, and one signed by another CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path

    def channel_credentials(self, client: str | None = None, root: Path | None = None):
        root_pem = (root or self.ca).read_bytes()
        if client is None:
            return grpc.ssl_channel_credentials(root_certificates=root_pem)
        cert, key = {
            "good": (self.client_cert, self.client_key),
            "rogue": (self.rogue_cert, self.rogue_key),
        }[client]
        return grpc.ssl_channel_credentials(
            root_certificates=root_pem,
            private_key=key.read_bytes(),
            certificate_chain=cert.read_bytes(),
        )


def make_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None):
        cert_path = folder / f"{stem}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (folder / f"{stem}.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        return cert_path

    def ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        return cert, key

    def leaf(
        cn: str,
        issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer[0].subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer[1], hashes.SHA256()), key

    authority = ca("streams test CA")
    rogue = ca("some other CA")
    server = leaf(
        "localhost",
        authority,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = leaf("app", authority, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    stranger = leaf("app", rogue, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return Pki(
        ca=write("ca", authority[0], None),
        server_cert=write("server", *server),
        server_key=folder / "server.key",
        client_cert=write("client", *client),
        client_key=folder / "client.key",
        rogue_ca=write("rogue-ca", rogue[0], None),
        rogue_cert=write("rogue-client", *stranger),
        rogue_key=folder / "rogue-client.key",
    )
