"""Consumer groups through the Python clients (sync and async) against a real
server: management calls, subscribe round trips, ack / nack / park, a deleted
group, and the re-join after a server restart (RocksDB: settled records stay
settled, unsettled ones come again)."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from streams import (
    AlreadyExists,
    AsyncClient,
    Client,
    GroupNotFound,
    InvalidArgument,
    Message,
    NotFound,
    Ordering,
    RetryPolicy,
    Subscription,
)
from tests.support.process import ServerProcess, free_port
from tests.support.waiting import wait_until

from .conftest import unique
from .fault_proxy import FaultProxy


@pytest.fixture(scope="module")
def server(shared_server: ServerProcess) -> ServerProcess:
    return shared_server


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, retry=RetryPolicy(max_elapsed=20)) as c:
        yield c


def _fill(client: Client, space: str, segments: int, per_segment: int) -> int:
    """Records interleaved over segments s0, s1, ... (one transaction per round);
    returns the last position."""
    last = 0
    for n in range(1, per_segment + 1):
        txn = client.transaction(space)
        for s in range(segments):
            txn.add(f"s{s}", f"s{s}-{n}".encode())
        last = txn.commit().last_position
    return last


def _settled_through(client: Client, space: str, group: str, position: int) -> None:
    """Waits until the group's durable progress covers ``position``."""
    wait_until(lambda: client.get_group(space, group).acked_through >= position, timeout=15,
               what=f"acked_through >= {position}")  # fmt: skip


def _check_in_order(messages: list[Message]) -> None:
    """Each segment's records came in sequence order, with no gap."""
    seen: dict[str, list[int]] = defaultdict(list)
    for m in messages:
        seen[m.segment].append(m.sequence)
    for segment, sequences in seen.items():
        assert sequences == list(range(1, len(sequences) + 1)), (segment, sequences)


# -- management ---------------------------------------------------------------------------------


def test_create_resolves_defaults_and_is_idempotent(client: Client) -> None:
    space = unique("mgmt")
    group = client.create_group(space, "billing")
    assert (group.space, group.name, group.ordering) == (space, "billing", Ordering.PER_SEGMENT)
    assert (group.from_offset, group.from_time, group.from_end) == (None, None, False)
    assert (group.ack_timeout, group.max_attempts) == (timedelta(seconds=30), 5)
    assert (group.dead_letter_space, group.dead_letter_segment) == ("$parked", f"{space}/billing")
    assert client.create_group(space, "billing") == group  # the same again: OK
    with pytest.raises(AlreadyExists):
        client.create_group(space, "billing", max_attempts=7)
    custom = client.create_group(
        space, "audit", ordering=Ordering.NONE, from_offset=3, ack_timeout=2.5,
        max_attempts=9, dead_letter_space="dead", dead_letter_segment="audit-dead",
    )  # fmt: skip
    assert (custom.ordering, custom.from_offset, custom.ack_timeout, custom.max_attempts) == (
        Ordering.NONE, 3, timedelta(seconds=2.5), 9)  # fmt: skip
    assert (custom.dead_letter_space, custom.dead_letter_segment) == ("dead", "audit-dead")
    with pytest.raises(InvalidArgument, match="dead_letter_space"):
        client.create_group(space, "loop", dead_letter_space=space)


def test_get_list_delete(client: Client) -> None:
    space = unique("mgmt")
    last = _fill(client, space, 2, 3)
    for name in ("c", "a", "b"):
        client.create_group(space, name, from_end=name == "b")
    assert [g.name for g in client.list_groups(space, page_size=1)] == ["a", "b", "c"]
    a = client.get_group(space, "a")
    assert (a.group.name, a.acked_through, a.last_position, a.lag) == ("a", 0, last, last)
    assert (a.in_flight, a.parked, a.members) == (0, 0, ())
    assert client.get_group(space, "b").acked_through == last  # from_end: nothing to do
    client.delete_group(space, "a")
    client.delete_group(space, "a")  # idempotent
    with pytest.raises(GroupNotFound) as caught:
        client.get_group(space, "a")
    assert isinstance(caught.value, NotFound)
    assert (caught.value.space, caught.value.group) == (space, "a")
    assert [g.name for g in client.list_groups(space)] == ["b", "c"]
    assert list(client.list_groups(unique("empty"))) == []


def test_subscribe_to_an_unknown_group_raises_group_not_found(client: Client) -> None:
    with (
        client.subscribe(unique("none"), "ghost") as subscription,
        pytest.raises(GroupNotFound) as caught,
    ):
        next(subscription)
    assert caught.value.group == "ghost"


# -- subscribe round trips ----------------------------------------------------------------------


def test_sync_round_trip_each_segment_in_order(client: Client) -> None:
    space = unique("sync")
    last = _fill(client, space, segments=4, per_segment=5)
    client.create_group(space, "workers")
    got: list[Message] = []
    with client.subscribe(space, "workers", member_name="w1", max_in_flight=3) as sub:
        for message in sub:
            assert message.attempt == 1
            got.append(message)
            assert message.ack() is True
            if len(got) == 20:
                break
        assert sub.member_id and sub.joins == 1
        # The member is visible while it is in the group.
        info = client.get_group(space, "workers")
        assert [(m.id, m.name) for m in info.members] == [(sub.member_id, "w1")]
    _check_in_order(got)
    assert sorted(m.position for m in got) == list(range(1, last + 1))
    _settled_through(client, space, "workers", last)
    info = client.get_group(space, "workers")
    assert (info.in_flight, info.members, info.lag) == (0, (), 0)


def test_a_double_ack_is_harmless(client: Client) -> None:
    # Finding 3: ack() twice sent [p, p], more than max_in_flight 1, and the
    # server ended the subscription INVALID_ARGUMENT.
    space = unique("double-ack")
    client.produce(space, "a", [b"1", b"2", b"3"])
    client.create_group(space, "g")
    got = []
    with client.subscribe(space, "g", max_in_flight=1) as sub:
        for message in sub:
            got.append(message.position)
            assert message.ack() and message.ack() and message.nack(park=True)
            if len(got) == 3:
                break
        assert sub.joins == 1
    assert got == [1, 2, 3]
    _settled_through(client, space, "g", 3)
    assert client.get_group(space, "g").parked == 0  # the first answer counted


def test_async_round_trip_with_nack_and_park(server: ServerProcess) -> None:
    space = unique("async")

    async def main() -> None:
        async with AsyncClient(server.target) as client:
            await client.produce(space, "a", [b"a1", b"a2"])
            await client.produce(space, "b", [b"b1"])
            await client.create_group(space, "g", max_attempts=3)
            assert [g.name async for g in client.list_groups(space)] == ["g"]
            seen: list[tuple[bytes, int]] = []
            async with client.subscribe(space, "g", member_name="aio") as sub:
                async for message in sub:
                    seen.append((message.payload, message.attempt))
                    if message.payload == b"a1" and message.attempt == 1:
                        assert message.nack(reason="not yet")
                    elif message.payload == b"b1":
                        assert message.nack(park=True, reason="poison")
                    else:
                        message.ack()
                    if (b"a2", 1) in seen:
                        break
            # a1 came again (attempt 2) before a2: its segment waits for it.
            a = [s for s in seen if s[0].startswith(b"a")]
            assert a == [(b"a1", 1), (b"a1", 2), (b"a2", 1)]
            assert (b"b1", 1) in seen
            info = await client.get_group(space, "g")
            assert info.group.name == "g"
            parked = await wait_parked(client, "$parked", f"{space}/g")
            assert parked.payload == b"b1"
            assert parked.metadata["streams-parked-reason"] == "poison"
            assert parked.metadata["streams-parked-space"] == space
            assert parked.metadata["streams-parked-segment"] == "b"
            assert parked.metadata["streams-parked-attempts"] == "1"

    asyncio.run(main())


async def wait_parked(client: AsyncClient, space: str, segment: str) -> Message:
    for _ in range(500):
        records = [r async for r in client.consume(space, segment)]
        if records:
            return records[0]  # type: ignore[return-value]
        await asyncio.sleep(0.02)
    raise AssertionError(f"nothing parked in {space}/{segment}")


def test_park_with_a_long_reason_parks(client: Client) -> None:
    # Finding 2: the README's worker parks with reason=repr(exc); one over 4 KiB
    # ended the subscription INVALID_ARGUMENT and the record was never parked.
    space = unique("long-reason")
    client.produce(space, "a", [b"poison", b"next"])
    client.create_group(space, "g")
    with client.subscribe(space, "g") as sub:
        for message in sub:
            if message.payload == b"poison":
                assert message.nack(park=True, reason="é" * 5000)
            else:
                message.ack()
                break
        assert sub.joins == 1
    _settled_through(client, space, "g", 2)  # a park is durable before it counts
    (record,) = client.consume("$parked", f"{space}/g")
    assert record.payload == b"poison"
    assert record.metadata["streams-parked-reason"] == "é" * 2048


def test_a_message_left_unsettled_goes_to_the_next_member(client: Client) -> None:
    space = unique("leave")
    client.produce(space, "a", [b"one", b"two"])
    client.create_group(space, "g")
    first = client.subscribe(space, "g", member_name="first")
    message = next(first)
    assert (message.payload, message.attempt) == (b"one", 1)
    with client.subscribe(space, "g", member_name="second") as second:
        wait_until(lambda: len(client.get_group(space, "g").members) == 2, what="2 members")
        first.close()
        # Closed without an answer: the record goes to the other member, attempt
        # 2; the old message is dead.
        assert message.ack() is False
        again = next(second)
        assert (again.payload, again.sequence, again.attempt) == (b"one", 1, 2)
        again.ack()
        assert next(second).payload == b"two"


def test_acks_sent_before_close_are_kept(client: Client) -> None:
    space = unique("close")
    client.produce(space, "a", [b"one", b"two"])
    client.create_group(space, "g")
    with client.subscribe(space, "g") as sub:
        next(sub).ack()  # close() flushes it, then leaves
    with client.subscribe(space, "g") as sub:
        message = next(sub)
        # "two" may have gone to the first subscription once "one" settled, before
        # it left (then this is its second delivery, attempts outliving members).
        assert message.payload == b"two" and message.attempt in (1, 2)


def test_close_with_deliveries_still_unread_ends_before_its_grace(client: Client) -> None:
    # gRPC reports a stream's end only once every response before it was read:
    # close() waited out its whole grace whenever deliveries were still on
    # their way. A grace far longer than the wait tells a drained close from one
    # that waited it out.
    space = unique("unread")
    for n in range(40):  # 40 records of 64 KiB: several responses of at most 1 MiB
        client.produce(space, f"s{n}", [bytes(64 << 10)])
    client.create_group(space, "g", ordering=Ordering.NONE)
    sub = client.subscribe(space, "g", max_in_flight=1000)
    next(sub)  # joined, and every record delivered, most of them not read
    wait_until(lambda: client.get_group(space, "g").in_flight == 40, what="deliveries sent")
    closed = threading.Event()
    threading.Thread(target=lambda: (sub.close(grace=600), closed.set()), daemon=True).start()
    assert closed.wait(60), "close() waited for its grace"
    wait_until(lambda: not client.get_group(space, "g").members, what="the member left")


def test_deleting_the_group_ends_its_subscriptions(client: Client) -> None:
    space = unique("deleted")
    client.produce(space, "a", [b"one"])
    client.create_group(space, "g")
    with client.subscribe(space, "g") as sub:
        assert next(sub).payload == b"one"
        client.delete_group(space, "g")
        with pytest.raises(GroupNotFound):
            next(sub)


def _iterate_in_thread(sub: Subscription) -> tuple[threading.Thread, threading.Event]:
    """Iterates ``sub`` to its end in a thread; the event is set at the end."""
    ended = threading.Event()

    def run() -> None:
        for _ in sub:
            pass
        ended.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, ended


def test_close_from_another_thread_ends_the_iteration(client: Client) -> None:
    space = unique("idle")
    client.create_group(space, "g")
    sub = client.subscribe(space, "g")
    thread, ended = _iterate_in_thread(sub)
    wait_until(lambda: client.get_group(space, "g").members, what="the member joined")
    sub.close()
    thread.join(10)
    assert ended.is_set()
    wait_until(lambda: not client.get_group(space, "g").members, what="the member left")


def test_a_subscription_left_by_break_leaves_at_once(client: Client) -> None:
    # Finding 6: the gRPC call's request thread held the subscription, so one
    # dropped without close() stayed a member (holding its records) forever,
    # and its request thread waited forever.
    space = unique("abandon")
    client.produce(space, "a", [b"1", b"2"])
    client.create_group(space, "g")
    threads = set(threading.enumerate())

    def abandon() -> None:
        for message in client.subscribe(space, "g", max_in_flight=1):
            message.ack()
            break  # no with, no close()

    abandon()
    # Freed as the loop let go of it: closed then and there (the ack sent, the
    # stream ended by the server), no garbage collection needed.
    info = client.get_group(space, "g")
    assert info.members == ()
    _settled_through(client, space, "g", 1)
    wait_until(lambda: set(threading.enumerate()) <= threads, what="no thread left behind")
    with client.subscribe(space, "g") as sub:
        assert (next(sub).payload, client.get_group(space, "g").in_flight) == (b"2", 1)


def test_an_async_subscription_left_by_break_leaves(server: ServerProcess, client: Client) -> None:
    space = unique("aio-abandon")
    client.produce(space, "a", [b"1", b"2"])
    client.create_group(space, "g")

    def left() -> None:
        wait_until(lambda: not client.get_group(space, "g").members, what="the member left")

    async def main() -> None:
        async with AsyncClient(server.target) as aio:
            this = asyncio.current_task()

            async def abandon() -> None:
                async for message in aio.subscribe(space, "g", max_in_flight=1):
                    message.ack()
                    break  # no async with, no close()

            await abandon()
            await asyncio.to_thread(left)  # the loop runs the close meanwhile
            for _ in range(250):  # and that close ends, with the call's own tasks
                if asyncio.all_tasks() == {this}:
                    break
                await asyncio.sleep(0.02)
            assert asyncio.all_tasks() == {this}

    asyncio.run(main())
    _settled_through(client, space, "g", 1)


# -- re-join after a restart --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["restart", "kill -9"])
def test_rejoin_after_restart_keeps_settled_and_redelivers_the_rest(
    tmp_path: Path, how: str
) -> None:
    server = ServerProcess(tmp_path / "data", port=free_port()).start()
    try:
        with Client(server.target, retry=RetryPolicy(max_elapsed=30)) as client:
            space = unique("rejoin")
            client.produce(space, "a", [b"a1", b"a2", b"a3"])
            client.produce(space, "b", [b"b1", b"b2"])
            client.create_group(space, "g")
            sub = client.subscribe(space, "g", max_in_flight=10)
            first = [next(sub), next(sub)]  # a1 and b1: one per segment at a time
            assert sorted(m.payload for m in first) == [b"a1", b"b1"]
            a1 = next(m for m in first if m.payload == b"a1")
            b1 = next(m for m in first if m.payload == b"b1")
            a1.ack()
            a2 = next(sub)
            assert a2.payload == b"a2"
            _settled_through(client, space, "g", a1.position)
            if how == "restart":
                server.restart()  # graceful: the stream ends with UNAVAILABLE
            else:
                server.kill9_and_restart()  # the connection is lost
            # b1 and a2 were never settled: they come again on the new stream.
            again = [next(sub), next(sub)]
            assert sub.joins == 2
            assert sorted(m.payload for m in again) == [b"a2", b"b1"]
            # The old stream's messages are dead: the server delivered them anew.
            assert b1.ack() is False and a2.ack() is False
            for m in again:
                m.ack()
            # Then each segment's next record: never a1 again (it was settled).
            rest = [next(sub), next(sub)]
            assert sorted(m.payload for m in rest) == [b"a3", b"b2"]
            for m in rest:
                m.ack()
            _check_in_order([a1, *again, *rest])
            last = client.peek(space).position
            _settled_through(client, space, "g", last)
            sub.close()
    finally:
        server.close()


def test_rejoin_after_a_broken_stream_while_the_server_runs(
    server: ServerProcess, client: Client
) -> None:
    space = unique("broken")
    client.produce(space, "a", [b"a1", b"a2"])
    client.create_group(space, "g")
    proxy = FaultProxy(server.target)
    try:
        with Client(proxy.target, retry=RetryPolicy(max_elapsed=20)) as proxied:
            sub = proxied.subscribe(space, "g")
            a1 = next(sub)
            first_member = sub.member_id
            proxy.break_streams()
            # The server saw the member leave; the client joins again and gets a1 anew.
            again = next(sub)
            assert (again.payload, sub.joins) == (b"a1", 2)
            assert sub.member_id != first_member
            assert a1.ack() is False
            again.ack()
            a2 = next(sub)
            assert (a2.payload, a2.attempt) == (b"a2", 1)
            a2.ack()
            sub.close()
            assert proxy.calls["Subscribe"] == 2
    finally:
        proxy.close()
    _settled_through(client, space, "g", a2.position)


def test_rejoin_after_resource_exhausted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Finding 12: a stream ended RESOURCE_EXHAUSTED (a server momentarily full)
    # ended the worker instead of joining again with back-off.
    limits = {"STREAMS_MAX_GROUP_MEMBERS": "1", "STREAMS_MAX_REQUEST_BYTES": "2000",
              "STREAMS_MAX_INFLIGHT_REQUEST_BYTES": "2000"}  # fmt: skip
    server = ServerProcess(tmp_path / "data", port=free_port(), env=limits).start()
    caplog.set_level("WARNING", logger="streams.client")
    try:
        with Client(server.target, retry=RetryPolicy(max_elapsed=20)) as client:
            space = unique("full")
            client.produce(space, "a", [b"a1"])
            client.create_group(space, "g")
            first = client.subscribe(space, "g", member_name="first")
            a1 = next(first)
            # Mid-stream: a message over the server's request limit ends the stream.
            assert a1.nack(reason="x" * 3000)
            again = next(first)
            assert (again.payload, first.joins) == (b"a1", 2)
            assert a1.ack() is False  # the old stream's message is dead
            # At the join: the group has its most members; the second waits for room.
            second = client.subscribe(space, "g", member_name="second")
            got: list[Message] = []
            waiting = threading.Thread(target=lambda: got.append(next(second)))
            waiting.start()
            wait_until(lambda: "the most max_group_members allows" in caplog.text, timeout=15,
                       what="the refused join's back-off")  # fmt: skip
            first.close()  # leaves a1 unsettled: it goes to the second member
            waiting.join(15)
            assert [m.payload for m in got] == [b"a1"]
            assert second.joins == 1
            got[0].ack()
            second.close()
            _settled_through(client, space, "g", 1)
    finally:
        server.close()


def test_async_rejoin_after_a_broken_stream_and_unknown_group(
    server: ServerProcess, client: Client
) -> None:
    space = unique("aio-broken")
    client.produce(space, "a", [b"a1", b"a2"])
    client.create_group(space, "g")
    proxy = FaultProxy(server.target)

    async def main() -> None:
        retry = RetryPolicy(max_elapsed=20)
        async with (
            AsyncClient(proxy.target, retry=retry) as proxied,
            proxied.subscribe(space, "g") as sub,
        ):
            a1 = await sub.__anext__()
            proxy.break_streams()
            again = await sub.__anext__()
            assert (again.payload, sub.joins) == (b"a1", 2)
            assert a1.ack() is False
            assert again.ack() is True
            a2 = await sub.__anext__()
            assert (a2.payload, a2.attempt) == (b"a2", 1)
            a2.ack()
        async with AsyncClient(server.target) as direct:
            with pytest.raises(GroupNotFound):
                async with direct.subscribe(space, "ghost") as ghost:
                    await ghost.__anext__()
            with pytest.raises(GroupNotFound):
                await direct.get_group(space, "ghost")

    try:
        asyncio.run(main())
    finally:
        proxy.close()
    _settled_through(client, space, "g", 2)


def test_close_during_a_rejoin_back_off_ends_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ServerProcess(tmp_path / "data", port=free_port()).start()
    slow = RetryPolicy(initial_backoff=60, max_backoff=60, jitter=0)
    try:
        with Client(server.target, retry=slow) as client:
            space = unique("backoff")
            client.create_group(space, "g")
            sub = client.subscribe(space, "g")
            thread, ended = _iterate_in_thread(sub)
            wait_until(lambda: sub.joins == 1 or not thread.is_alive(), what="joined")
            caplog.set_level("WARNING", logger="streams.client")
            server.stop()
            wait_until(lambda: "retrying in 60.00 s" in caplog.text, timeout=20,
                       what="the re-join's back-off")  # fmt: skip
            sub.close()
            thread.join(10)
            assert ended.is_set()  # not after the 60 s back-off
    finally:
        server.close()
