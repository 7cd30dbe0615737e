"""Retries, reconnects and the Consumer helper, against real server processes that
start late, stop and restart on the same port and data."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from streams import Client, Consumer, RetryPolicy, Unavailable
from tests.support.inproc import InProcessServer
from tests.support.process import ServerProcess, free_port

PATIENT = RetryPolicy(attempts=60, initial_backoff=0.05, max_backoff=0.25)


def test_produce_waits_for_a_server_that_starts_late(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", port=free_port())
    starter = threading.Timer(0.5, server.start)
    started = time.monotonic()
    starter.start()
    try:
        with Client(server.target, retry=PATIENT) as client:
            ack = client.produce("late", "a", [b"x"])
            elapsed = time.monotonic() - started
            assert elapsed >= 0.5, "the call cannot succeed before the server exists"
            assert (ack.acks[0].last_sequence, ack.duplicate) == (1, False)
            assert [r.payload for r in client.consume("late")] == [b"x"]
    finally:
        starter.join()
        server.stop()


def test_by_default_a_client_waits_longer_than_a_restart(tmp_path: Path) -> None:
    # The old default gave up after about 3 s (issue 11, item 1); a sidecar restart
    # or an app that starts before Streams takes longer. The 4 s are the scenario.
    server = ServerProcess(tmp_path / "data", port=free_port())
    starter = threading.Timer(4.0, server.start)
    starter.start()
    try:
        with Client(server.target) as client:
            assert client.produce("late", "a", b"x").acks[0].last_sequence == 1
    finally:
        starter.join()
        server.stop()


def test_retries_stop_at_the_time_budget_and_log_each_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = RetryPolicy(max_elapsed=1.0, initial_backoff=0.05, max_backoff=0.2)
    with Client(f"127.0.0.1:{free_port()}", retry=policy) as client:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="streams.client"), pytest.raises(Unavailable):
            client.produce("s", "a", b"x")
        elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 5, elapsed
    lines = [r.getMessage() for r in caplog.records if r.name == "streams.client"]
    assert len(lines) >= 3, lines
    for n, line in enumerate(lines, 1):
        assert line.startswith("Produce s: UNAVAILABLE: "), line
        assert f"attempt {n} failed, retrying in " in line, line
    assert all(r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize(
    ("field", "value"), [("attempts", 0), ("max_elapsed", -1.0), ("jitter", 1.5)]
)
def test_a_retry_policy_out_of_range_is_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: value})


def test_without_retries_unavailable_is_raised_at_once() -> None:
    with Client(f"127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=1)) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            client.produce("s", "a", b"x")
        assert time.monotonic() - started < 5


def test_the_same_transaction_id_after_a_restart_writes_once(tmp_path: Path) -> None:
    # What a retry after a lost answer does: the first attempt committed, the
    # server restarted, the client sends the same request again under the same id.
    server = ServerProcess(tmp_path / "data", port=free_port()).start()
    try:
        with Client(server.target, retry=PATIENT) as client:
            first = client.produce("s", "a", [b"x", b"y"])
            server.stop()
            server.start()
            again = client.produce("s", "a", [b"x", b"y"], transaction_id=first.transaction_id)
            assert again.duplicate
            assert (again.first_position, again.last_position) == (1, 2)
            assert [r.payload for r in client.consume("s")] == [b"x", b"y"]
    finally:
        server.stop()


def test_follow_reconnects_across_a_restart_without_gap_or_duplicate(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", port=free_port()).start()
    try:
        with Client(server.target, retry=PATIENT) as client:
            client.produce("s", "a", [b"1", b"2"])
            stream = client.follow("s", limit=5)
            got = [next(stream).payload, next(stream).payload]
            server.stop()  # the follow ends with UNAVAILABLE; the stream reconnects
            server.start()
            client.produce("s", "a", [b"3", b"4"])
            client.produce("s", "b", [b"5"])
            got += [r.payload for r in stream]
            assert got == [b"1", b"2", b"3", b"4", b"5"]
    finally:
        server.stop()


def test_consumer_resumes_exactly_after_its_last_commit(server_process: ServerProcess) -> None:
    with Client(server_process.target) as client:
        client.produce("orders", "eu", [f"r{i}".encode() for i in range(1, 8)])
        seen: list[int] = []
        with pytest.raises(RuntimeError, match="boom"):  # noqa: SIM117 - the raise is the test
            with Consumer(client, "billing", "orders", "eu", commit_every=2) as consumer:
                for record in consumer:
                    seen.append(record.sequence)
                    if record.sequence == 3:
                        # Records 1 and 2 are committed (every 2); 3 is in hand.
                        assert client.get_offset("billing", "orders", "eu") == 2
                    if record.sequence == 5:
                        raise RuntimeError("boom")
        # 1-4 were processed (each asked for the next); 5 failed: it is not committed.
        assert seen == [1, 2, 3, 4, 5]
        assert client.get_offset("billing", "orders", "eu") == 4
        with Consumer(client, "billing", "orders", "eu", commit_every=100) as again:
            replay = [next(again).sequence, next(again).sequence]
        assert replay == [5, 6]
        # Leaving without an error counts the record in hand as processed.
        assert client.get_offset("billing", "orders", "eu") == 6
        with Consumer(client, "billing", "orders", "eu") as last:
            assert next(last).sequence == 7


def test_consumer_commits_on_time_while_idle(inproc_target: str) -> None:
    with Client(inproc_target) as client:
        client.produce("s", "a", [b"1", b"2"])
        consumer = Consumer(client, "c", "s", commit_every=1000, commit_interval=0.2)
        consumer.ready()
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.extend(r.position for r in consumer))
        reader.start()
        deadline = time.monotonic() + 10
        # Record 2 counts as processed once the reader waits for a third; the timer commits it.
        while client.get_offset("c", "s") != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get_offset("c", "s") == 2
        assert consumer.committed == 2
        consumer.close()
        reader.join(10)
        assert not reader.is_alive() and got == [1, 2]


def test_consumer_on_a_whole_space_commits_positions(inproc_target: str) -> None:
    with Client(inproc_target) as client:
        client.transaction("s").add("a", b"1").add("b", b"2").commit()
        with Consumer(client, "c", "s", commit_interval=None) as consumer:
            assert [next(consumer).segment, next(consumer).segment] == ["a", "b"]
        assert client.get_offset("c", "s") == 2
        assert client.get_offset("c", "s", "b") is None


@pytest.fixture
def inproc_target(inproc: InProcessServer) -> str:
    return inproc.target
