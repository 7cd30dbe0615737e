"""Start-up errors (contract additions, "Server start-up errors"): a bad option
ends the server at once with exit code 2 and one line on standard error naming
the option and the value, never a traceback; relative paths are the caller's;
``--version`` prints the version and exits 0. Real server processes."""

from __future__ import annotations

import importlib.metadata
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.process import REPO_ROOT, ServerProcess, clean_env

from .helpers import Pki

SERVER = str(REPO_ROOT / "server.py")
# Long enough for a start that wrongly succeeds to be seen serving, not exiting.
EXIT_TIMEOUT = 20.0


def run_server(*args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None):
    """Runs ``python server.py ARGS`` from ``cwd``; fails if it is still running
    after EXIT_TIMEOUT (it started instead of refusing)."""
    try:
        return subprocess.run(
            [sys.executable, SERVER, *args],
            cwd=cwd,
            env=clean_env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the server did not exit: it started with {args}; stdout {exc.stdout!r}")


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit code 2, one line on standard error naming each of ``words``, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1, f"one line expected on stderr, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not named in {lines[0]!r}"
    assert "listening on" not in result.stdout
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:99999", "127.0.0.1:65536", "localhost", "127.0.0.1:", "::1:5000"]
)
def test_a_listen_address_without_a_valid_port_is_refused(tmp_path: Path, listen: str) -> None:
    result = run_server("--listen", listen, "--data", str(tmp_path / "data"))
    assert_refused(result, "--listen", repr(listen))
    assert not (tmp_path / "data").exists(), "nothing is created for a refused start"


def test_a_bad_listen_variable_is_refused_naming_it(tmp_path: Path) -> None:
    result = run_server("--data", str(tmp_path / "data"), env={"STREAMS_LISTEN": "127.0.0.1:70000"})
    assert_refused(result, "STREAMS_LISTEN", "70000")


def test_an_address_in_use_is_refused(tmp_path: Path, busy_port: int) -> None:
    listen = f"127.0.0.1:{busy_port}"
    line = assert_refused(
        run_server("--listen", listen, "--data", str(tmp_path / "data")), "--listen", listen
    )
    assert "in use" in line


def test_a_metrics_address_in_use_is_refused(tmp_path: Path, busy_port: int) -> None:
    listen = f"127.0.0.1:{busy_port}"
    result = run_server(
        "--listen", "127.0.0.1:0", "--data", str(tmp_path / "data"), "--metrics-listen", listen
    )
    assert_refused(result, "--metrics-listen", listen)


def test_a_metrics_address_without_a_valid_port_is_refused(tmp_path: Path) -> None:
    result = run_server(
        "--listen", "127.0.0.1:0", "--data", str(tmp_path / "d"), "--metrics-listen", "0:99999"
    )
    assert_refused(result, "--metrics-listen", "99999")


def test_a_data_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("not a folder")
    for data in (file, file / "below"):
        result = run_server("--listen", "127.0.0.1:0", "--data", str(data))
        assert_refused(result, "--data", str(data))


def test_a_data_directory_another_server_holds_is_refused(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data").start():
        result = run_server("--listen", "127.0.0.1:0", "--data", str(tmp_path / "data"))
        assert_refused(result, "--data", str(tmp_path / "data"))


def test_a_missing_tls_file_is_refused_with_its_path_from_the_callers_directory(
    tmp_path: Path, pki: Pki
) -> None:
    shutil.copy(pki.server_key, tmp_path / "server.key")
    result = run_server(
        "--listen", "127.0.0.1:0", "--data", "data", "--tls-cert", "missing.pem",
        "--tls-key", "server.key", cwd=tmp_path,
    )  # fmt: skip
    assert_refused(result, "--tls-cert", str(tmp_path / "missing.pem"))
    assert not (tmp_path / "data").exists()


def test_a_certificate_and_a_key_that_do_not_match_are_refused(tmp_path: Path, pki: Pki) -> None:
    result = run_server(
        "--listen", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key),
    )  # fmt: skip
    assert_refused(result, "--tls-cert", str(pki.server_cert))


def test_relative_paths_are_taken_from_the_callers_directory(tmp_path: Path, pki: Pki) -> None:
    """TLS files and the data folder named relative to where the server was
    started, not to the repository (where server.py lives)."""
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(pki.server_cert, certs / "server.pem")
    shutil.copy(pki.server_key, certs / "server.key")
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--listen", "127.0.0.1:0", "--data", "here",
         "--tls-cert", "certs/server.pem", "--tls-key", "certs/server.key"],
        cwd=tmp_path, env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, (line, proc.stderr.read() if proc.poll() else "")
        port = int(line.rsplit(":", 1)[1])
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (tmp_path / "here" / "CURRENT").exists(), "the data folder is the caller's"
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_version_prints_the_version_and_exits_0() -> None:
    result = run_server("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"streams-server {importlib.metadata.version('streams')}"
    assert result.stderr == ""
