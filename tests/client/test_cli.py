"""The ``streams`` command line, run as a subprocess against a server process."""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from streams import Client
from streams.cli import main
from tests.support.inproc import InProcessServer
from tests.support.process import REPO_ROOT, ServerProcess, free_port
from tests.support.waiting import wait_until

from .conftest import unique


def cli(
    *args: str, target: str | None = None, stdin: str | bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STREAMS_TARGET"}
    if target is not None:
        env["STREAMS_TARGET"] = target
    data = stdin.decode() if isinstance(stdin, bytes) else stdin
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        input=data, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT,
    )  # fmt: skip


def lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def target(shared_server: ServerProcess) -> str:
    return shared_server.target


def test_produce_arguments_then_consume(target: str) -> None:
    space = unique("cli")
    acks = lines(cli("produce", space, "a", "hello", "wörld", "-m", "k=v", target=target))
    assert len(acks) == 1
    assert acks[0]["acks"] == [{"segment": "a", "first_sequence": 1, "last_sequence": 2}]
    assert len(acks[0]["transaction_id"]) == 32 and acks[0]["duplicate"] is False
    records = lines(cli("consume", space, "a", target=target))
    assert [(r["sequence"], r["payload"], r["payload_encoding"]) for r in records] == [
        (1, "hello", "utf-8"),
        (2, "wörld", "utf-8"),
    ]
    assert records[0]["metadata"] == {"k": "v"}
    assert records[0]["timestamp"].endswith("Z")


def test_binary_payloads_print_as_base64(target: str) -> None:
    space = unique("bin")
    with Client(target) as client:
        client.produce(space, "a", [b"\xff\x00\xfe"])
    (record,) = lines(cli("peek", space, "a", target=target))
    assert record["payload_encoding"] == "base64"
    assert base64.b64decode(record["payload"]) == b"\xff\x00\xfe"


def test_produce_from_stdin_in_batches(target: str) -> None:
    space = unique("stdin")
    text = "".join(f"line {i}\n" for i in range(1, 8))
    acks = lines(cli("produce", space, "a", "--batch-size", "3", "--expected-sequence", "0",
                     target=target, stdin=text))  # fmt: skip
    assert [a["acks"][0]["last_sequence"] for a in acks] == [3, 6, 7]
    records = lines(cli("consume", space, "a", "--from", "6", target=target))
    assert [r["payload"] for r in records] == ["line 6", "line 7"]


def test_produce_a_file_shows_progress(target: str, tmp_path: Path) -> None:
    space = unique("file")
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(2500)))
    result = cli("produce", space, "s", "--file", str(path), "--progress", target=target)
    acks = lines(result)
    assert [a["acks"][0]["last_sequence"] for a in acks] == [1000, 2000, 2500]
    assert "100.0%" in result.stderr and "2500 records" in result.stderr
    (last,) = lines(cli("peek", space, "s", target=target))
    assert json.loads(last["payload"]) == {"n": 2499}


def test_transaction_id_makes_a_rerun_a_duplicate(target: str) -> None:
    space = unique("txn")
    first = lines(cli("produce", space, "a", "x", "--transaction-id", "job-1", target=target))
    again = lines(cli("produce", space, "a", "x", "--transaction-id", "job-1", target=target))
    assert (first[0]["duplicate"], again[0]["duplicate"]) == (False, True)
    assert len(lines(cli("consume", space, target=target))) == 1


def test_consume_options(target: str) -> None:
    space = unique("opts")
    with Client(target) as client:
        for i in range(1, 6):
            client.produce(space, "a" if i % 2 else "b", f"r{i}")
        client.commit("c", space, offset=2)
    assert [r["position"] for r in lines(cli("consume", space, "--to", "2", target=target))] == [
        1, 2,
    ]  # fmt: skip
    assert [r["position"] for r in lines(cli("consume", space, "--limit", "2", "--from", "3",
                                             target=target))] == [3, 4]  # fmt: skip
    assert [r["sequence"] for r in lines(cli("consume", space, "b", target=target))] == [1, 2]
    by_consumer = lines(cli("consume", space, "--consumer", "c", target=target))
    assert [r["position"] for r in by_consumer] == [3, 4, 5]
    by_time = lines(cli("consume", space, "--from-time", "2000-01-01T00:00:00Z", "--limit", "1",
                        target=target))  # fmt: skip
    assert by_time[0]["position"] == 1
    future = str(time.time() + 3600)
    assert lines(cli("consume", space, "--from-time", future, target=target)) == []


def lines_of(stream: IO[str] | None) -> queue.Queue[str]:
    """Each line of ``stream`` as it comes, read in a thread."""
    assert stream is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_follow_prints_records_as_they_come(inproc: InProcessServer) -> None:
    space = unique("follow")
    with Client(inproc.target) as client:
        client.produce(space, "a", b"before")
        # Without PYTHONUNBUFFERED: the command itself must flush each line.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        env["STREAMS_TARGET"] = inproc.target
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "consume", space, "--follow", "--from-end",
             "--limit", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT,
        )  # fmt: skip
        try:
            printed = lines_of(proc.stdout)
            # The server holds the follower with its start fixed (at the end):
            # only what comes from now on may be printed.
            wait_until(
                lambda: inproc.server.store.tail.followed(space) or proc.poll() is not None,
                timeout=30,
                what="the CLI to follow",
            )
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            client.produce(space, "a", b"one")
            # Printed while the command still runs, before the next record exists.
            assert json.loads(printed.get(timeout=30))["payload"] == "one"
            client.produce(space, "b", b"two")
            assert json.loads(printed.get(timeout=30))["payload"] == "two"
            assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            proc.kill()
            proc.wait(10)
    assert printed.empty()


def test_commit_offset_spaces_segments(target: str) -> None:
    space = unique("meta")
    with Client(target) as client:
        client.produce(space, "b", [b"1", b"2"])
        client.produce(space, "a", [b"3"])
    committed = lines(cli("commit", space, "b", "--consumer", "c", "--offset", "2", target=target))
    assert committed == [{"consumer": "c", "space": space, "segment": "b", "offset": 2}]
    assert lines(cli("offset", space, "b", "--consumer", "c", target=target))[0]["offset"] == 2
    segments = lines(cli("segments", space, "--page-size", "1", target=target))
    assert [(s["name"], s["last_sequence"], s["last_position"]) for s in segments] == [
        ("a", 1, 3),
        ("b", 2, 2),
    ]
    spaces = lines(cli("spaces", "--page-size", "1", target=target))
    assert {"name": space, "last_position": 3} in [
        {"name": s["name"], "last_position": s["last_position"]} for s in spaces
    ]
    # Options may also come before the command, and --target beats STREAMS_TARGET.
    before = cli("--target", target, "peek", space, target="127.0.0.1:1")
    assert lines(before)[0]["payload"] == "3"


def test_server_errors_exit_1_with_the_message(target: str) -> None:
    space = unique("err")
    missing = cli("offset", space, "--consumer", "nobody", target=target)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and missing.stdout == ""
    empty = cli("peek", space, target=target)
    assert empty.returncode == 1 and "NOT_FOUND" in empty.stderr
    cli("produce", space, "a", "x", target=target)
    past = cli("commit", space, "--consumer", "c", "--offset", "9", target=target)
    assert past.returncode == 1 and "OUT_OF_RANGE" in past.stderr
    stale = cli("produce", space, "a", "y", "--expected-sequence", "0", target=target)
    assert stale.returncode == 1 and "FAILED_PRECONDITION" in stale.stderr
    assert "last sequence 1" in stale.stderr
    bad = cli("peek", "bad\x01name", target=target)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr


def test_unreachable_server_exits_1() -> None:
    result = cli("spaces", "--timeout", "1", target=f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["nonsense"],
        ["consume"],
        ["consume", "s", "--from", "-1"],
        ["consume", "s", "--from", "1", "--consumer", "c"],
        ["consume", "s", "--from-time", "yesterday"],
        ["consume", "s", "--from-end"],
        ["commit", "s", "--offset", "1"],
        ["produce", "s", "a", "x", "--file", "f"],
        ["produce", "s", "a", "--file", "/no/such/file"],
        ["produce", "s", "a", "-m", "novalue", "x"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # In process (the subprocess path is the test below); no server at the target:
    # a usage error must be reported before any call is made.
    with pytest.raises(SystemExit) as exited:
        main([*args, "--target", f"127.0.0.1:{free_port()}"] if args else [])
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_usage_error_exits_2_as_a_process() -> None:
    result = cli("consume", "s", "--limit", "many", target=f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "usage: streams consume" in result.stderr and "--limit" in result.stderr


@pytest.mark.parametrize(
    "command", [["produce"], ["consume"], ["peek"], ["commit"], ["offset"], ["spaces"],
                ["segments"]],
)  # fmt: skip
def test_help_everywhere(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: streams {command[0]}")
    assert "--target" in out


def test_help_as_a_process() -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: streams")
    assert all(c in result.stdout for c in ["produce", "consume", "peek", "commit", "offset",
                                             "spaces", "segments"])  # fmt: skip


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "streams"
    if not script.exists():
        pytest.skip("the venv predates the console script: scripts/test reinstalls it")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "produce" in result.stdout
