"""``streams group ...`` and ``streams subscribe``, run as subprocesses against a
server process (the shared one of this module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from streams import Client
from streams.cli import main
from tests.support.process import REPO_ROOT, ServerProcess, free_port
from tests.support.waiting import wait_until

from .conftest import unique
from .test_cli import cli, lines, lines_of


@pytest.fixture(scope="module")
def target(shared_server: ServerProcess) -> str:
    return shared_server.target


def test_group_create_info_list_delete(target: str) -> None:
    space = unique("cli-group")
    (created,) = lines(cli("group", "create", space, "billing", "--max-attempts", "7",
                           "--ack-timeout", "2.5", "--from", "1", target=target))  # fmt: skip
    assert created == {
        "space": space, "name": "billing", "ordering": "per_segment", "from_offset": 1,
        "from_time": None, "from_end": False, "ack_timeout": 2.5, "max_attempts": 7,
        "dead_letter_space": "$parked", "dead_letter_segment": f"{space}/billing",
    }  # fmt: skip
    # The same again is OK; other settings are the server's error, exit 1.
    again = cli("group", "create", space, "billing", "--max-attempts", "7", "--ack-timeout",
                "2.5", "--from", "1", target=target)  # fmt: skip
    assert lines(again) == [created]
    other = cli("group", "create", space, "billing", target=target)
    assert other.returncode == 1 and "ALREADY_EXISTS" in other.stderr
    lines(cli("group", "create", space, "audit", "--ordering", "none", "--from-end",
              target=target))  # fmt: skip
    listed = lines(cli("group", "list", space, "--page-size", "1", target=target))
    assert [(g["name"], g["ordering"], g["from_end"]) for g in listed] == [
        ("audit", "none", True), ("billing", "per_segment", False)]  # fmt: skip
    with Client(target) as client:
        client.produce(space, "a", [b"x", b"y"])
    (info,) = lines(cli("group", "info", space, "billing", target=target))
    numbers = ("acked_through", "last_position", "lag", "in_flight", "parked", "members")
    assert [info[k] for k in numbers] == [0, 2, 2, 0, 0, []]
    table = cli("group", "list", space, "--output", "table", target=target)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["NAME", "SPACE", "ORDERING"]
    assert lines(cli("group", "delete", space, "billing", target=target)) == [
        {"space": space, "group": "billing", "deleted": True}]  # fmt: skip
    gone = cli("group", "info", space, "billing", target=target)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr


def test_subscribe_prints_json_lines_and_acks_each(target: str) -> None:
    space = unique("cli-sub")
    with Client(target) as client:
        client.produce(space, "a", [b"a1", b"a2"])
        client.produce(space, "b", [b"\xff"])
        client.create_group(space, "g")
        printed = lines(cli("subscribe", space, "g", "--limit", "3", "--member", "cli",
                            target=target))  # fmt: skip
        assert sorted((m["segment"], m["sequence"], m["attempt"]) for m in printed) == [
            ("a", 1, 1), ("a", 2, 1), ("b", 1, 1)]  # fmt: skip
        binary = next(m for m in printed if m["segment"] == "b")
        assert binary["payload_encoding"] == "base64"
        # Printed is acked: the group's progress covers all three.
        wait_until(lambda: client.get_group(space, "g").acked_through == 3, what="acked")
        # What it prints reads back as records (--input json).
        copied = cli("produce", unique("copy"), "--input", "json", target=target,
                     stdin="".join(json.dumps(m) + "\n" for m in printed))  # fmt: skip
        assert copied.returncode == 0, copied.stderr


def test_subscribe_manual_reads_one_answer_per_record(target: str) -> None:
    space = unique("cli-manual")
    with Client(target) as client:
        client.produce(space, "a", [b"first", b"second"])
        client.create_group(space, "g")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        env["STREAMS_TARGET"] = target
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "subscribe", space, "g", "--manual"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, cwd=REPO_ROOT,
        )  # fmt: skip
        assert proc.stdin is not None
        try:
            printed = lines_of(proc.stdout)

            def answer(text: str) -> dict[str, object]:
                message: dict[str, object] = json.loads(printed.get(timeout=30))
                proc.stdin.write(text + "\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
                return message

            first = answer("nack not yet")
            assert (first["payload"], first["attempt"]) == ("first", 1)
            again = answer("park no good")
            assert (again["payload"], again["attempt"]) == ("first", 2)
            second = answer("ack")
            assert (second["payload"], second["attempt"]) == ("second", 1)
            wait_until(lambda: client.get_group(space, "g").acked_through == 2, what="settled")
            proc.stdin.close()  # end of input: leave
            assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            proc.kill()
            proc.wait(10)
        (parked,) = list(client.consume("$parked", f"{space}/g"))
        assert parked.payload == b"first"
        assert parked.metadata["streams-parked-reason"] == "no good"
        assert parked.metadata["streams-parked-attempts"] == "2"
        assert client.get_group(space, "g").parked == 1


def test_subscribe_manual_with_piped_answers_settles_each_then_leaves(target: str) -> None:
    space = unique("cli-piped")
    with Client(target) as client:
        client.produce(space, "a", [b"one", b"two"])
        client.create_group(space, "g")
        # Answers written ahead: each settles one record, and the end of input
        # leaves once they are used (not before, and without waiting for more).
        result = cli("subscribe", space, "g", "--manual", target=target,
                     stdin="ack\npark done with it\n")  # fmt: skip
        assert [m["payload"] for m in lines(result)] == ["one", "two"]
        wait_until(lambda: client.get_group(space, "g").acked_through == 2, what="settled")
        assert client.get_group(space, "g").parked == 1


def test_subscribe_manual_refuses_an_unknown_answer(target: str) -> None:
    space = unique("cli-bad")
    with Client(target) as client:
        client.produce(space, "a", [b"only"])
        client.create_group(space, "g")
        result = cli("subscribe", space, "g", "--manual", target=target, stdin="maybe\n")
        assert result.returncode == 2
        assert "expected ack | nack [REASON] | park [REASON] | quit" in result.stderr
        assert "'maybe'" in result.stderr and "position 1 left unsettled" in result.stderr
        # Left unsettled: delivered again to the next member.
        (message,) = lines(cli("subscribe", space, "g", "--limit", "1", target=target))
        assert message["payload"] == "only"


def test_subscribe_to_an_unknown_group_exits_1(target: str) -> None:
    result = cli("subscribe", unique("none"), "ghost", target=target)
    assert result.returncode == 1
    assert result.stderr.startswith("streams: error: NOT_FOUND: ")


@pytest.mark.parametrize(
    "args",
    [
        ["group"],
        ["group", "create", "s"],
        ["group", "create", "s", "g", "--from", "1", "--from-end"],
        ["group", "create", "s", "g", "--ordering", "random"],
        ["group", "create", "s", "g", "--max-attempts", "0"],
        ["group", "info", "s"],
        ["subscribe", "s"],
        ["subscribe", "s", "g", "--max-in-flight", "-1"],
    ],
)
def test_group_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*args, "--target", f"127.0.0.1:{free_port()}"])
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [["group", "create"], ["group", "info"], ["group", "list"], ["group", "delete"],
                ["subscribe"]],
)  # fmt: skip
def test_group_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: streams {' '.join(command)}")
    assert "--target" in out
