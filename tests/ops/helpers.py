"""Shared helpers of the operations tests: servers (in-process and subprocess),
metrics scraping, TLS certificates, token files, sockets.

Everything runs on loopback against real servers over real RocksDB.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime
import ipaddress
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from streams.auth import TokenAuth
from streams.config import Config
from streams.server import StreamsServer
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE = "streams.v1.StreamsService"
START_TIMEOUT = 30.0
CALL_TIMEOUT = 10.0
_LISTENING = re.compile(r"listening on (\[[^\]]+\]|[^\s:\[\]]+):(\d+)")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- waiting -------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Polls ``predicate`` until it returns something truthy; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on, read from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


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


# -- in-process server -------------------------------------------------------


class InProc:
    """A StreamsServer on its own event loop thread, optionally with token auth;
    ``config`` overrides go to :class:`Config` (listen defaults to 127.0.0.1:0)."""

    def __init__(self, data: Path, auth: TokenAuth | None = None, **overrides: Any) -> None:
        self.config = dataclasses.replace(Config(listen="127.0.0.1:0", data=data), **overrides)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = StreamsServer(self.config, auth)
        self.port = self.run(self.server.start())
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.StreamsServiceStub(self.channel)
        self._stopping: concurrent.futures.Future[None] | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def begin_stop(self, grace: float) -> concurrent.futures.Future[None]:
        """Starts a graceful stop without waiting for it."""
        self._stopping = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)
        return self._stopping

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.channel.close()
        if self._stopping is not None:
            self._stopping.result(30)
        else:
            self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> InProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- subprocess server -------------------------------------------------------


class ServerProcess:
    """``python server.py`` (or another ``command``) as a child process.

    ``flags`` go on the command line; ``env`` adds STREAMS_* variables to an
    environment cleared of every other STREAMS_* variable. Unless
    ``listen_flags`` is false, ``--listen 127.0.0.1:0 --data DATA`` come first.
    Standard error goes to ``log_path``; standard output is read for the
    ``listening on HOST:PORT`` line.
    """

    def __init__(
        self,
        tmp: Path,
        *flags: str,
        env: dict[str, str] | None = None,
        data: Path | None = None,
        listen_flags: bool = True,
        command: Sequence[str] = (sys.executable, "server.py"),
        name: str = "server",
    ) -> None:
        self.data = data or tmp / "data"
        self.log_path = tmp / f"{name}.stderr"
        self.flags = list(flags)
        self.extra_env = dict(env or {})
        self.listen_flags = listen_flags
        self.command = list(command)
        self.proc: subprocess.Popen[str] | None = None
        self.target = ""
        self.port = 0
        self.stdout_lines: list[str] = []
        self._log: IO[str] | None = None

    def argv(self) -> list[str]:
        head = ["--listen", "127.0.0.1:0", "--data", str(self.data)] if self.listen_flags else []
        return [*self.command, *head, *self.flags]

    def spawn(self) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
        env.update(self.extra_env)
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        return self.proc

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Spawns and waits for the ``listening on`` line; returns self."""
        proc = self.spawn()
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_drain, args=(proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                line = None
            if line is None:
                self.kill()
                raise AssertionError(
                    f"server did not print 'listening on' (stdout {self.stdout_lines!r});"
                    f" stderr:\n{self.stderr()[-3000:]}"
                )
            self.stdout_lines.append(line)
            match = _LISTENING.search(line)
            if match:
                break
        self.port = int(match.group(2))
        self.target = f"127.0.0.1:{self.port}"
        return self

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        """Waits for the exit; returns the exit code."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self._log is not None and self.proc.poll() is not None:
                self._log.close()
                self._log = None
        return code

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int:
        self.send(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.wait(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _drain(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


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
