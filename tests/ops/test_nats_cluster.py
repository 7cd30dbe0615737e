"""The test JetStream cluster (tests/support/nats.py) does what the JetStream
suites rely on: an R3 stream with atomic batches, a leader killed with SIGKILL
replaced by a new one with every acknowledged message intact, and the killed
node caught up once it is started again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import Header, PubAck, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError

from tests.support.nats import NatsCluster

SUBJECTS = ("seg-a", "seg-b", "seg-c")
WRONG_LAST_SEQUENCE = 10071


async def publish_batch(
    js: JetStreamContext,
    nc: nats.NATS,
    stream: str,
    messages: list[tuple[str, bytes]],
    expect: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> PubAck:
    """One atomic batch (ADR-50): plain publishes with the batch headers, the
    last one marked as the commit and acknowledged for the whole batch;
    ``expect`` are headers of the first message (expected sequences)."""
    batch = uuid.uuid4().hex
    last = len(messages)
    for n, (subject, payload) in enumerate(messages, start=1):
        headers = {Header.BATCH_ID.value: batch, Header.BATCH_SEQUENCE.value: str(n)}
        if n == 1:
            headers.update(expect or {})
        if n < last:
            await nc.publish(f"{stream}.{subject}", payload, headers=headers)
    headers[Header.BATCH_COMMIT.value] = "1"
    return await js.publish(f"{stream}.{subject}", payload, headers=headers, timeout=timeout)


def batch_of(tag: str, count: int) -> list[tuple[str, bytes]]:
    return [(SUBJECTS[n % len(SUBJECTS)], f"{tag}-{n}".encode()) for n in range(count)]


async def stored(js: JetStreamContext, stream: str, last: int) -> list[tuple[str, bytes]]:
    """Every message 1..last of ``stream``, read through its leader."""
    found = []
    for seq in range(1, last + 1):
        msg = await js.get_msg(stream, seq)
        found.append(((msg.subject or "").removeprefix(f"{stream}."), msg.data or b""))
    return found


def test_leader_killed_then_restarted(nats_cluster: NatsCluster) -> None:
    cluster = nats_cluster
    stream = f"FAILOVER_{uuid.uuid4().hex[:8]}"
    first, second = batch_of("before", 100), batch_of("after", 50)

    async def scenario() -> None:
        nc = await nats.connect(cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        js = nc.jetstream(timeout=20.0)  # API calls; a loaded CI machine is slow
        try:
            await js.add_stream(
                StreamConfig(
                    name=stream,
                    subjects=[f"{stream}.>"],
                    num_replicas=3,
                    storage=StorageType.FILE,
                    allow_atomic=True,
                )
            )
            ack = await publish_batch(js, nc, stream, first)
            assert (ack.seq, ack.batch_size) == (100, 100)

            # A batch whose expectation fails is refused whole: nothing of it is stored.
            doomed = batch_of("doomed", 3)
            with pytest.raises(APIError):
                await publish_batch(
                    js, nc, stream, doomed, {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: "1"}
                )
            assert (await js.stream_info(stream)).state.last_seq == 100

            leader = cluster.wait_leader_of(stream)
            cluster.kill(leader)
            cluster.wait_leader_of(stream, other_than=leader)
            # Reading a message by sequence is a JetStream API call: it needs the
            # meta leader too, which the kill may have taken (CI read 503s).
            cluster.wait_meta_leader()
            # Writes resume on the new leader (the client may still be reconnecting).
            # Expecting the stream's last sequence: a retry cannot store it twice.
            after_first = {Header.EXPECTED_LAST_SEQUENCE.value: "100"}
            resumed = await until_answered(
                lambda: publish_batch(js, nc, stream, second, after_first, timeout=2.0)
            )
            assert resumed is None or (resumed.seq, resumed.batch_size) == (150, 50)
            assert await stored(js, stream, 150) == first + second

            cluster.start(leader)
            state = cluster.wait_caught_up(leader, stream)
            assert (state["messages"], state["last_seq"]) == (150, 150)
            await js.delete_stream(stream)
        finally:
            await nc.close()
            cluster.heal()

    asyncio.run(scenario())


async def until_answered(publish: Callable[[], Awaitable[PubAck]]) -> PubAck | None:
    """``publish()`` until it is answered. A timeout while the client finds the
    new leader leaves the outcome unknown; the batch expects the stream's last
    sequence, so a retry after an attempt that was stored is refused (10071:
    None, and the caller reads the stream) instead of storing it twice."""
    unknown = False
    for _ in range(15):
        try:
            return await publish()
        except NatsTimeout:
            unknown = True
        except APIError as exc:
            if unknown and exc.err_code == WRONG_LAST_SEQUENCE:
                return None
            raise
    raise AssertionError("the batch was never acknowledged after the leader was killed")
