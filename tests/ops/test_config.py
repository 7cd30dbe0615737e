"""Configuration: every option a flag and a STREAMS_* variable, documented with
its default; logs as text or one JSON object per line."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import grpc
import pytest

from streams import config
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.fronts import listening_ports
from tests.support.process import ServerProcess, free_port

from .helpers import CALL_TIMEOUT, produce, rpc_code, run_python, sample, scrape

# The options the operations issue names, with the default --help must show.
OPS_DEFAULTS = {
    "--listen": "127.0.0.1:50051",
    "--data": "data",
    "--shutdown-grace": "10.0",
    "--log-level": "info",
    "--log-format": "text",
    "--metrics-listen": "",
    "--tls-cert": "None",
    "--tls-key": "None",
    "--tls-client-ca": "None",
    "--auth-tokens": "None",
    "--retention-interval": "60.0",
    "--retention-max-age": "0.0",
    "--retention-max-records-per-segment": "0",
    "--retention-max-bytes": "0",
}
# A value for each option other than its default (limits: default - 1).
VALUES = {
    "--listen": "0.0.0.0:6000",
    "--data": "/srv/streams",
    "--storage": "memory",
    "--merge-small-bytes": "4096",
    "--dedupe-window-seconds": "60",
    "--dedupe-sweep-seconds": "5",
    "--reclaim-seconds": "2.5",
    "--merge-seconds": "0.5",
    "--shutdown-grace": "3.5",
    "--slow-consumer-seconds": "2.5",
    "--keepalive-seconds": "5",
    "--keepalive-timeout-seconds": "2.5",
    "--follow-linger-ms": "7.5",
    "--workers": "1",
    "--front-start-seconds": "7.5",
    "--front-exit-seconds": "2.5",
    "--front-scrape-seconds": "2.5",
    "--log-level": "debug",
    "--log-format": "json",
    "--metrics-listen": "127.0.0.1:9100",
    "--tls-cert": "other-cert.pem",
    "--tls-key": "other-key.pem",
    "--tls-client-ca": "ca.pem",
    "--auth-tokens": "tokens.json",
    "--page-token-key": "page.key",
    "--wal-tail-damage": "drop",
    "--retention-interval": "0.5",
    "--retention-max-age": "3600.25",
    "--retention-max-records-per-segment": "1000",
    "--retention-max-bytes": "1000000",
    "--nats-url": "nats://127.0.0.1:4223,nats://127.0.0.1:4224",
    "--nats-prefix": "other",
}
# What an option needs beside it to be valid, given through the environment.
_TLS = {"STREAMS_TLS_CERT": "cert.pem", "STREAMS_TLS_KEY": "key.pem"}
COMPANIONS = {"--tls-cert": _TLS, "--tls-key": _TLS, "--tls-client-ca": _TLS}


def help_options() -> dict[str, str]:
    """``python server.py --help``: each option's text, on one line."""
    result = run_python(["server.py", "--help"], env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    blocks: dict[str, str] = {}
    current = None
    for line in result.stdout.splitlines():
        match = re.match(r"^  (--(?!version\b)[a-z0-9-]+)", line)
        if match:
            current = match.group(1)
            blocks[current] = line
        elif re.match(r"^  (-h, --help|--version)", line) or not line.startswith("  "):
            current = None
        elif current is not None:
            blocks[current] += " " + line.strip()
    return blocks


@pytest.fixture(scope="module")
def options() -> dict[str, str]:
    return help_options()


def test_help_documents_each_option_its_variable_and_default(options: dict[str, str]) -> None:
    assert set(OPS_DEFAULTS) <= set(options)
    for flag, text in options.items():
        variable = "STREAMS_" + flag[2:].upper().replace("-", "_")
        assert f"[env {variable}]" in text, (flag, text)
        assert re.search(r"\(default: [^)]*\)", text), (flag, text)
    for flag, default in OPS_DEFAULTS.items():
        assert f"(default: {default})" in options[flag], (flag, options[flag])


def test_every_option_is_read_from_its_variable(options: dict[str, str]) -> None:
    for flag, text in options.items():
        variable = "STREAMS_" + flag[2:].upper().replace("-", "_")
        base = COMPANIONS.get(flag, {})
        default = config.parse([], environ=dict(base))
        if flag == "--no-sync":
            argv, value = [flag], "true"
        else:
            if flag in VALUES:
                value = VALUES[flag]
            else:
                match = re.search(r"\(default: (\d+)\)", text)
                assert match, f"no value known for {flag}: {text}"
                value = str(int(match.group(1)) - 1)
            argv = [flag, value]
        from_env = config.parse([], environ={**base, variable: value})
        from_flag = config.parse(argv, environ=dict(base))
        assert from_env == from_flag, flag
        assert from_env != default, f"{variable}={value} changed nothing"


def test_json_logs_with_request_fields_from_the_environment(tmp_path: Path) -> None:
    metrics_port = free_port()
    server = ServerProcess(
        tmp_path / "data",
        listen_flags=False,
        env={
            "STREAMS_LISTEN": "127.0.0.1:0",
            "STREAMS_DATA": str(tmp_path / "data"),
            "STREAMS_LOG_FORMAT": "json",
            "STREAMS_LOG_LEVEL": "debug",
            "STREAMS_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "STREAMS_SHUTDOWN_GRACE": "2.5",
        },
    )
    with server.start(), grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.StreamsServiceStub(channel)
        produce(stub, "orders", "eu", [b"x"])
        peek = pb.PeekRequest(space="empty")
        assert rpc_code(lambda: stub.Peek(peek, timeout=CALL_TIMEOUT)) == grpc.StatusCode.NOT_FOUND
        # The variables took effect: metrics on the chosen port, data where asked.
        assert sample(scrape(metrics_port), "streams_produced_records_total") == 1
        assert (tmp_path / "data").is_dir()
        assert server.stop() == 0

    lines = [line for line in server.stderr().splitlines() if line.strip()]
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict), line
        assert {"time", "level", "message"} <= set(entry), line
        entries.append(entry)
    rpcs = [e for e in entries if e["message"] == "rpc"]
    produce_line = next(e for e in rpcs if e.get("method") == "Produce")
    assert produce_line["code"] == "OK"
    assert produce_line["space"] == "orders"
    assert produce_line["level"] == "debug"
    peek_line = next(e for e in rpcs if e.get("method") == "Peek")
    assert peek_line["code"] == "NOT_FOUND"
    assert any("2.5" in e["message"] for e in entries if "shutting down" in e["message"])


def test_text_logs_by_default_and_no_metrics_listener(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    with server.start(), grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.StreamsServiceStub(channel)
        produce(stub, "orders", "eu", [b"x"])
        # Metrics are off unless asked for: the process listens on the gRPC port only.
        assert server.proc is not None
        assert listening_ports(server.proc.pid) == {server.port}
        assert server.stop(signal.SIGTERM) == 0
    lines = [line for line in server.stderr().splitlines() if line.strip()]
    assert lines
    for line in lines:
        with pytest.raises(ValueError):
            json.loads(line)
    assert any(re.search(r"INFO streams: serving", line) for line in lines)
    # Request lines are debug only: none at the default level.
    assert not any(re.search(r"\brpc\b", line) for line in lines)


def test_memtable_bytes_reaches_rocksdb(tmp_path: Path) -> None:
    """--memtable-bytes sets RocksDB's write buffer (its OPTIONS file says so)."""
    server = ServerProcess(tmp_path / "data", flags=["--memtable-bytes", str(3 << 20)])
    with server.start():
        assert server.stop() == 0
    options = sorted((tmp_path / "data").glob("OPTIONS-*"))[-1].read_text()
    assert re.search(rf"^\s*write_buffer_size={3 << 20}$", options, re.MULTILINE)
