"""The ``streams`` command line, run as a subprocess against a server process."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import pytest

from streams import Client, NewRecord
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


# `python -m streams.cli` with Ctrl-C handled as by default whatever this process
# inherited: a shell starts background jobs with SIGINT ignored, and Python keeps
# an ignored SIGINT ignored, so the SIGINT these tests send would do nothing.
INTERRUPTIBLE_CLI = [
    sys.executable, "-c",
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('streams.cli', run_name='__main__', alter_sys=True)",
]  # fmt: skip


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
        ["trim", "s", "a"],
        ["trim", "s", "a", "--before", "1", "--before-time", "0"],
        ["delete", "s"],
        ["delete", "s", "a", "--whole-space"],
        ["delete", "s", "--whole-space", "--expected-sequence", "1"],
        ["configure", "s"],
        ["configure", "s", "--max-age", "-1"],
        ["configure", "s", "--max-age", "nan"],
        ["configure", "s", "--default-retention", "--max-bytes", "1"],
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
                ["segments"], ["trim"], ["delete"], ["configure"], ["info"], ["watch"]],
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


# -- issue 11: version, usage, --commit, lag, outputs, round trip, input errors, progress --------


def test_version_prints_the_package_version() -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"streams {version('streams')}\n"


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["produce", "s", "a", "x", "--file", "f"], "produce"),
        (["produce", "s", "a", "x", "--input", "json"], "produce"),
        (["produce", "s"], "produce"),
        (["consume", "s", "--from-end"], "consume"),
        (["consume", "s", "--commit"], "consume"),
        (["lag", "s"], "lag"),
    ],
)
def test_a_commands_error_shows_that_commands_usage(
    args: list[str], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*args, "--target", f"127.0.0.1:{free_port()}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: streams {command} "), err


def test_consume_commit_is_a_tail_that_commits_what_it_printed(target: str) -> None:
    space = unique("tailc")
    env = {**os.environ, "STREAMS_TARGET": target}
    proc = subprocess.Popen(
        [*INTERRUPTIBLE_CLI, "consume", space, "--consumer", "c", "--commit",
         "--commit-every", "1", "--output", "payload"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        with Client(target) as client:
            for n in range(1, 4):
                client.produce(space, "a", f"r{n}")
                assert proc.stdout.readline() == f"r{n}\n".encode()
                # Record n-1 was committed before record n was fetched and printed.
                # (It may already have committed record n too.)
                if n > 1:
                    assert client.get_offset("c", space) in (n - 1, n)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 130, proc.stderr.read() if proc.stderr else ""
            # On the way out it committed the last record it printed.
            assert client.get_offset("c", space) == 3
            client.produce(space, "b", [b"r4", b"r5"])
    finally:
        proc.kill()
        proc.wait()
    # A new run resumes after the commit; --limit ends it, committed.
    again = cli("consume", space, "--consumer", "c", "--commit", "--limit", "1", target=target)
    assert [r["payload"] for r in lines(again)] == ["r4"]
    with Client(target) as client:
        assert client.get_offset("c", space) == 4


def test_lag_per_named_consumer_with_a_commit(target: str) -> None:
    space = unique("lag")
    with Client(target) as client:
        for n in range(10):
            client.produce(space, "a" if n % 2 else "b", f"{n}")
        client.commit("slow", space, offset=4)
        client.commit("done", space, offset=10)
        client.commit("seg", space, "a", offset=2)
    rows = lines(cli("lag", space, "-c", "slow", "-c", "done", "-c", "never", target=target))
    assert rows == [
        {"consumer": "slow", "space": space, "segment": "", "committed": 4, "last": 10, "lag": 6},
        {"consumer": "done", "space": space, "segment": "", "committed": 10, "last": 10, "lag": 0},
    ]
    (row,) = lines(cli("lag", space, "a", "--consumer", "seg", target=target))
    assert (row["segment"], row["committed"], row["last"], row["lag"]) == ("a", 2, 5, 3)
    # No SPACE: every space, with the consumers named.
    everywhere = lines(cli("lag", "--consumer", "slow", target=target))
    assert {"space": space, "lag": 6} in [
        {"space": r["space"], "lag": r["lag"]} for r in everywhere
    ]
    table = cli("lag", space, "-c", "slow", "--output", "table", target=target)
    header, first = table.stdout.splitlines()
    assert header.split() == ["CONSUMER", "SPACE", "SEGMENT", "COMMITTED", "LAST", "LAG"]
    assert first.split() == ["slow", space, "4", "10", "6"]


def test_output_payload_and_table(target: str) -> None:
    space = unique("out")
    with Client(target) as client:
        client.produce(space, "a", [NewRecord(b"one", {"k": "v"}), NewRecord(b"two\tx")])
        client.produce(space, "b", [b"\xff\x00"])
    raw = subprocess.run(
        [sys.executable, "-m", "streams.cli", "consume", space, "--output", "payload",
         "--target", target],
        capture_output=True, cwd=REPO_ROOT, timeout=30,
    )  # fmt: skip
    assert raw.returncode == 0 and raw.stdout == b"one\ntwo\tx\n\xff\x00\n"
    table = cli("consume", space, "-o", "table", target=target)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0] == ["POSITION", "SEGMENT", "SEQUENCE", "TIMESTAMP", "PAYLOAD", "METADATA"]
    assert [r[:3] + r[4:] for r in rows[1:]] == [
        ["1", "a", "1", "one", "k=v"],
        ["2", "a", "2", '"two\\tx"'],
        ["3", "b", "1", "/wA="],
    ]
    spaces = cli("spaces", "--output", "table", target=target)
    assert spaces.stdout.split("\n", 1)[0].split() == [
        "NAME", "FIRST_POSITION", "LAST_POSITION", "RECORD_COUNT", "BYTES", "RETENTION",
        "LAST_TIMESTAMP",
    ]  # fmt: skip
    peek = cli("peek", space, "a", "-o", "payload", target=target)
    assert peek.stdout == "two\tx\n"


ROUND_TRIP = [
    ("eu", NewRecord(b'{"id": 1}', {"type": "created"})),
    ("us", NewRecord(b"line one\nline two", {"k": "v", "empty": ""})),
    ("eu", NewRecord(b"\xff\xfe binary \x00", {})),
    ("eu", NewRecord("ünïcödé ✓".encode(), {"ключ": "значение"})),
    ("us", NewRecord(b"", {"only": "metadata"})),
    ("asia", NewRecord(b"last", {})),
]


def _stored(client: Client, space: str) -> list[tuple[str, int, bytes, dict[str, str]]]:
    return [(r.segment, r.sequence, r.payload, dict(r.metadata))
            for r in client.consume(space)]  # fmt: skip


@pytest.mark.parametrize("via", ["stdin", "file"])
def test_consume_json_into_produce_copies_records(target: str, tmp_path: Path, via: str) -> None:
    source, copy = unique("src"), unique("copy")
    with Client(target) as client:
        for segment, record in ROUND_TRIP:
            client.produce(source, segment, record)
    dumped = cli("consume", source, "--output", "json", target=target)
    assert dumped.returncode == 0, dumped.stderr
    if via == "file":
        path = tmp_path / "dump.jsonl"
        path.write_text(dumped.stdout)
        loaded = cli("produce", copy, "--input", "json", "--file", str(path), target=target)
    else:
        loaded = cli("produce", copy, "--input", "json", target=target, stdin=dumped.stdout)
    assert loaded.returncode == 0, loaded.stderr
    with Client(target) as client:
        original, copied = _stored(client, source), _stored(client, copy)
        assert copied == original
        assert [r.position for r in client.consume(copy)] == list(range(1, len(ROUND_TRIP) + 1))
    # Into one named segment: payloads and metadata in the same order.
    into = unique("one")
    assert (
        cli("produce", into, "all", "-i", "json", target=target, stdin=dumped.stdout).returncode
        == 0
    )
    with Client(target) as client:
        assert [(p, m) for _, _, p, m in _stored(client, into)] == [
            (r.payload, dict(r.metadata)) for _, r in ROUND_TRIP
        ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"segment": "a"}', "'payload': expected a string"),
        ('{"segment": "a", "payload": "x", "payload_encoding": "rot13"}', "'payload_encoding'"),
        ('{"segment": "a", "payload": "!!", "payload_encoding": "base64"}', "not base64"),
        ('{"segment": "a", "payload": "x", "metadata": {"k": 1}}', "'metadata'"),
        ('{"payload": "x"}', "no 'segment'"),
    ],
)
def test_bad_input_lines_are_named_and_exit_2(
    target: str, tmp_path: Path, line: str, message: str
) -> None:
    space = unique("badline")
    path = tmp_path / "in.jsonl"
    path.write_text('{"segment": "a", "payload": "fine"}\n' + line + "\n")
    result = cli("produce", space, "--input", "json", "--file", str(path), target=target)
    assert result.returncode == 2
    assert f"streams: error: {path}:2: " in result.stderr and message in result.stderr, (
        result.stderr
    )
    piped = cli("produce", space, "-i", "json", target=target, stdin=path.read_text())
    assert piped.returncode == 2 and "<stdin>:2: " in piped.stderr


def test_a_server_error_names_the_line_of_the_record(target: str, tmp_path: Path) -> None:
    space = unique("bigline")
    path = tmp_path / "in.txt"
    path.write_text("a\nb\n" + "x" * (2 * 1024 * 1024) + "\nd\n")
    result = cli("produce", space, "s", "--file", str(path), target=target)
    assert result.returncode == 1
    assert f"streams: error: {path}:3: INVALID_ARGUMENT: " in result.stderr, result.stderr
    assert "records[2].payload" in result.stderr


def _stderr_of_produce(target: str, path: Path) -> tuple[int, str]:
    """Standard error as written: text mode would turn the bar's carriage returns into newlines."""
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "produce", unique("progress"), "s", "--file",
         str(path), "--progress", "--batch-size", "10", "--target", target],
        capture_output=True, cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    return result.returncode, result.stderr.decode()


def test_progress_counts_acknowledged_records_and_ends_its_line(
    target: str, tmp_path: Path
) -> None:
    path = tmp_path / "in.txt"
    # Batches of 10: the third holds a payload the server refuses.
    path.write_text("".join(f"{n}\n" for n in range(25)) + "x" * (2 * 1024 * 1024) + "\n")
    code, err = _stderr_of_produce(target, path)
    assert code == 1
    bar, error = err.rsplit("\r", 1)[1].split("\n", 1)
    assert bar.endswith(" 20 records acknowledged"), err
    assert error.startswith(f"streams: error: {path}:26: INVALID_ARGUMENT"), err
    assert "20 records acknowledged before this batch" in error
    good = tmp_path / "good.txt"
    good.write_text("".join(f"{n}\n" for n in range(25)))
    code, err = _stderr_of_produce(target, good)
    assert code == 0 and err.endswith("100.0% 25 records acknowledged\n"), err


# -- issue 13: trim, delete, configure, info, watch ------------------------------------------------


@pytest.fixture(scope="module")
def lifecycle_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server on the memory backend (the first to build the data lifecycle)."""
    server = ServerProcess(tmp_path_factory.mktemp("lifecycle") / "data",
                           flags=["--storage", "memory"])  # fmt: skip
    try:
        yield server.start().target
    finally:
        server.close()


def test_trim_info_and_lists_show_first_offsets(lifecycle_target: str) -> None:
    target = lifecycle_target
    space = unique("clitrim")
    lines(cli("produce", space, "a", "a1", "a2", "a3", target=target))
    lines(cli("produce", space, "b", "b1", target=target))
    trimmed = lines(cli("trim", space, "a", "--before", "3", target=target))
    assert trimmed == [{"space": space, "segment": "a", "first_offset": 3}]
    (segment,) = lines(cli("info", space, "a", target=target))
    assert {k: segment[k] for k in ("name", "first_sequence", "last_sequence", "record_count")} == {
        "name": "a",
        "first_sequence": 3,
        "last_sequence": 3,
        "record_count": 1,
    }
    assert segment["bytes"] > 0 and segment["last_timestamp"].endswith("Z")
    (space_info,) = lines(cli("info", space, target=target))
    assert (space_info["first_position"], space_info["last_position"]) == (3, 4)
    assert (space_info["record_count"], space_info["config"]) == (2, None)
    listed = lines(cli("segments", space, target=target))
    assert [(s["name"], s["first_sequence"]) for s in listed] == [("a", 3), ("b", 1)]
    assert [r["payload"] for r in lines(cli("consume", space, target=target))] == ["a3", "b1"]
    # A trim by time of the whole space; past the end is OUT_OF_RANGE (exit 1).
    assert lines(cli("trim", space, "--before-time", "2000-01-01T00:00:00Z",
                     target=target))[0]["first_offset"] == 3  # fmt: skip
    beyond = cli("trim", space, "a", "--before", "9", target=target)
    assert beyond.returncode == 1 and "OUT_OF_RANGE" in beyond.stderr
    table = cli("info", space, "a", "-o", "table", target=target)
    assert table.stdout.split("\n")[1].split()[:4] == ["a", "3", "3", "1"]


def test_delete_a_segment_then_the_space(lifecycle_target: str) -> None:
    target = lifecycle_target
    space = unique("clidel")
    lines(cli("produce", space, "a", "a1", "a2", target=target))
    lines(cli("produce", space, "b", "b1", target=target))
    stale = cli("delete", space, "a", "--expected-sequence", "1", target=target)
    assert stale.returncode == 1 and "FAILED_PRECONDITION" in stale.stderr
    assert lines(cli("delete", space, "a", "--expected-sequence", "2", target=target)) == [
        {"space": space, "segment": "a", "deleted": True}
    ]
    assert [s["name"] for s in lines(cli("segments", space, target=target))] == ["b"]
    gone = cli("info", space, "a", target=target)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
    assert lines(cli("delete", space, "--whole-space", target=target)) == [
        {"space": space, "segment": "", "deleted": True}
    ]
    assert cli("info", space, target=target).returncode == 1
    assert space not in [s["name"] for s in lines(cli("spaces", target=target))]


def test_configure_replaces_the_retention(lifecycle_target: str) -> None:
    target = lifecycle_target
    space = unique("cliconf")
    week = lines(cli("configure", space, "--max-age", "604800.5", "--max-bytes", "1000",
                     target=target))  # fmt: skip
    expected = {"max_age": 604800.5, "max_records_per_segment": 0, "max_bytes": 1000}
    assert week == [{"space": space, "config": {"retention": expected}}]
    assert lines(cli("info", space, target=target))[0]["config"] == {"retention": expected}
    table = cli("info", space, "-o", "table", target=target).stdout.splitlines()
    assert "max_age=604800.5s,max_bytes=1000" in table[1]
    forever = lines(cli("configure", space, "--max-age", "0", target=target))[0]["config"]
    assert forever == {"retention": {"max_age": 0, "max_records_per_segment": 0, "max_bytes": 0}}
    assert "forever" in cli("info", space, "-o", "table", target=target).stdout
    default = lines(cli("configure", space, "--default-retention", target=target))
    assert default == [{"space": space, "config": {"retention": None}}]


def test_watch_prints_the_snapshot_then_changes(lifecycle_target: str) -> None:
    target = lifecycle_target
    space = unique("cliwatch")
    with Client(target) as client:
        client.produce(space, "eu-1", b"x")
        client.produce(space, "us-1", b"y")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        env["STREAMS_TARGET"] = target
        proc = subprocess.Popen(
            [*INTERRUPTIBLE_CLI, "watch", space, "--prefix", "eu-"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT,
        )  # fmt: skip
        try:
            printed = lines_of(proc.stdout)
            first = json.loads(printed.get(timeout=30))
            assert (first["event"], first["name"], first["last_sequence"]) == (
                "snapshot",
                "eu-1",
                1,
            )
            assert json.loads(printed.get(timeout=30)) == {"event": "snapshot_complete"}
            client.produce(space, "us-1", b"not watched")
            client.produce(space, "eu-2", b"z")
            update = json.loads(printed.get(timeout=30))
            assert (update["event"], update["name"], update["record_count"]) == (
                "updated",
                "eu-2",
                1,
            )
            client.delete_segment(space, "eu-1")
            assert json.loads(printed.get(timeout=30)) == {"event": "deleted", "name": "eu-1"}
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 130
        finally:
            proc.kill()
            proc.wait(10)
