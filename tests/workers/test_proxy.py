"""The front's proxy of the group RPCs (streams.workers.proxy), in one process:
a "writer" StreamsServer on a Unix socket (RocksDB) and a "front"
StreamsServer with its own memory store and the proxy, on loopback. A group
RPC sent to the front must run on the writer (its store, its registry) with
the client's metadata, and come back with the writer's status and details;
every other RPC stays with the front."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from streams.auth import TokenAuth
from streams.config import Config
from streams.server import StreamsServer
from streams.slow_consumers import SlowConsumers
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from streams.workers.proxy import CHANNEL_OPTIONS, PROXIED, WriterProxy
from tests.support.group_wire import WireMember

GUARD = 20.0
TOKEN = (("authorization", "Bearer s3cret"),)


@dataclasses.dataclass
class Pair:
    writer: StreamsServer
    front: StreamsServer
    proxy: WriterProxy
    # Clients of the front (as a user's) and of the writer directly (to check what ran there).
    stub: pb_grpc.StreamsServiceStub
    direct: pb_grpc.StreamsServiceStub


@contextlib.asynccontextmanager
async def pair(tmp: Path, auth: bool = False) -> AsyncIterator[Pair]:
    tokens = None
    if auth:
        path = tmp / "tokens.json"
        path.write_text(
            json.dumps(
                {"tokens": [{"token": "s3cret", "spaces": ["*"], "access": ["read", "write"]}]}
            )
        )
        tokens = TokenAuth.load(path)
    socket_path = tmp / "writer.sock"
    writer = StreamsServer(Config(listen=f"unix:{socket_path}", data=tmp / "writer"), tokens)
    await writer.start()
    upstream = grpc.aio.insecure_channel(f"unix:{socket_path}", options=CHANNEL_OPTIONS)
    proxy = WriterProxy(upstream, SlowConsumers(10.0, lambda: None))
    front = StreamsServer(
        Config(listen="127.0.0.1:0", data=tmp / "front", storage="memory"),
        tokens,
        handlers=(proxy,),
    )
    port = await front.start()
    client = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    direct = grpc.aio.insecure_channel(f"unix:{socket_path}")
    try:
        yield Pair(
            writer,
            front,
            proxy,
            pb_grpc.StreamsServiceStub(client),
            pb_grpc.StreamsServiceStub(direct),
        )
    finally:
        for channel in (client, direct):
            await channel.close()
        await front.stop(0)
        await upstream.close()
        await writer.stop(0)


def run(tmp: Path, scenario: Callable[[Pair], Awaitable[None]], auth: bool = False) -> None:
    async def main() -> None:
        async with asyncio.timeout(GUARD), pair(tmp, auth) as p:
            await scenario(p)

    asyncio.run(main())


def group(name: str = "g", **kwargs: object) -> pb.Group:
    return pb.Group(space="orders", name=name, **kwargs)


async def produce(stub: pb_grpc.StreamsServiceStub, *payloads: bytes) -> None:
    records = [pb.RecordInput(payload=p) for p in payloads]
    request = pb.ProduceRequest(
        space="orders", writes=[pb.SegmentWrite(segment="s", records=records)]
    )
    await stub.Produce(request, metadata=TOKEN)


def test_group_rpcs_run_on_the_writer_and_the_rest_on_the_front(tmp_path: Path) -> None:
    async def scenario(p: Pair) -> None:
        created = await p.stub.CreateGroup(pb.CreateGroupRequest(group=group()))
        assert created.group.name == "g"
        # The writer's store has it; the front's own store was never asked.
        assert await p.writer.store.get_group("orders", "g") is not None
        assert await p.front.store.get_group("orders", "g") is None
        listed = await p.stub.ListGroups(pb.ListGroupsRequest(space="orders"))
        assert [g.name for g in listed.groups] == ["g"]
        # Produce is not proxied: it lands in the front's store only.
        await produce(p.stub, b"x")
        assert await p.front.store.list_spaces(None, 10)
        assert not await p.writer.store.list_spaces(None, 10)

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    "call",
    [
        # Another group of that name with other settings: ALREADY_EXISTS, named differences.
        lambda s: s.CreateGroup(pb.CreateGroupRequest(group=group(max_attempts=3))),
        lambda s: s.GetGroup(pb.GetGroupRequest(space="orders", group="nope")),
        lambda s: s.DeleteSpace(pb.DeleteSpaceRequest(space="")),
    ],
    ids=["already-exists", "not-found", "invalid-argument"],
)
def test_a_failure_comes_back_as_the_writer_gave_it(
    tmp_path: Path, call: Callable[[pb_grpc.StreamsServiceStub], Awaitable[object]]
) -> None:
    async def scenario(p: Pair) -> None:
        await p.direct.CreateGroup(pb.CreateGroupRequest(group=group()))
        with pytest.raises(grpc.aio.AioRpcError) as direct:
            await call(p.direct)
        with pytest.raises(grpc.aio.AioRpcError) as proxied:
            await call(p.stub)
        assert proxied.value.code() == direct.value.code() != grpc.StatusCode.UNKNOWN
        assert proxied.value.details() == direct.value.details()

    run(tmp_path, scenario)


def test_the_clients_token_reaches_the_writer(tmp_path: Path) -> None:
    async def scenario(p: Pair) -> None:
        request = pb.CreateGroupRequest(group=group())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await p.stub.CreateGroup(request)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await p.stub.CreateGroup(request, metadata=TOKEN)
        assert await p.writer.store.get_group("orders", "g") is not None

    run(tmp_path, scenario, auth=True)


def test_subscribe_streams_both_ways_through_the_front(tmp_path: Path) -> None:
    async def scenario(p: Pair) -> None:
        await p.stub.CreateGroup(pb.CreateGroupRequest(group=group()))
        await produce(p.direct, b"a", b"b")
        member = WireMember(p.stub, "orders", "g", name="m1")
        await member.join()
        got: list[pb.Delivery] = []
        while len(got) < 2:  # one in flight per segment: the next comes once this is acked
            batch = await member.read()
            assert batch is not None
            got.extend(batch)
            await member.ack([d.record.position for d in batch])
        assert [d.record.payload for d in got] == [b"a", b"b"]
        # The acks went up the stream: the writer's live group moves past both.
        while True:
            info = (await p.stub.GetGroup(pb.GetGroupRequest(space="orders", group="g"))).info
            assert [m.name for m in info.members] == ["m1"]
            if info.acked_through == got[-1].record.position:
                break
            await asyncio.sleep(0.01)  # polls the writer's state; the guard bounds it
        await member.leave()
        assert await member.read() is None
        assert await member.code() == grpc.StatusCode.OK

    run(tmp_path, scenario)


def test_a_client_cancel_ends_the_writers_stream(tmp_path: Path) -> None:
    async def scenario(p: Pair) -> None:
        await p.stub.CreateGroup(pb.CreateGroupRequest(group=group()))
        member = WireMember(p.stub, "orders", "g", name="m1")
        await member.join()
        member.kill()
        request = pb.GetGroupRequest(space="orders", group="g")
        while (await p.direct.GetGroup(request)).info.members:
            await asyncio.sleep(0.01)  # the writer's member leaves once its call is cancelled

    run(tmp_path, scenario)


def test_the_writers_end_of_a_stream_reaches_the_client(tmp_path: Path) -> None:
    async def scenario(p: Pair) -> None:
        await p.stub.CreateGroup(pb.CreateGroupRequest(group=group()))
        member = WireMember(p.stub, "orders", "g", name="m1")
        await member.join()
        await p.writer.end_groups()  # a writer's shutdown ends its Subscribe streams
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await member.read()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (ended.value.details() or "")

    run(tmp_path, scenario)


def test_a_closed_proxy_answers_new_calls_unavailable(tmp_path: Path) -> None:
    async def scenario(p: Pair) -> None:
        await p.stub.CreateGroup(pb.CreateGroupRequest(group=group()))
        p.proxy.close()  # the front's shutdown began
        member = WireMember(p.stub, "orders", "g", name="m1")  # its stream starts here
        for call in (
            p.stub.CreateGroup(pb.CreateGroupRequest(group=group("h"))),
            member.call.read(),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await p.writer.store.get_group("orders", "h") is None

    run(tmp_path, scenario)


def test_the_proxied_set_is_every_rpc_that_touches_the_group_registry() -> None:
    source = (Path(__file__).resolve().parents[2] / "streams" / "service.py").read_text()
    touching = set()
    for method in pb.DESCRIPTOR.services_by_name["StreamsService"].methods:
        snake = re.sub(r"(?<!^)([A-Z])", r"_\1", method.name).lower()
        body = source.split(f"\n    async def {snake}(", 1)[1]
        body = re.split(r"\n    (?:async )?def ", body, maxsplit=1)[0]
        if "self.groups" in body:
            touching.add(method.name)
    # At least these do today (a rename of the registry would empty the set).
    assert {"Subscribe", "GetGroup", "DeleteGroup", "DeleteSpace"} <= touching
    assert touching <= PROXIED


def test_large_deliveries_flow_through_the_front(tmp_path: Path) -> None:
    async def scenario(p: Pair) -> None:
        record = b"x" * (100 * 1024)
        for _ in range(4):
            await produce(p.direct, *[record] * 6)
        await p.stub.CreateGroup(pb.CreateGroupRequest(group=group(ordering=pb.ORDERING_NONE)))
        member = WireMember(p.stub, "orders", "g", name="m1", max_in_flight=24)
        await member.join()
        got: list[pb.Delivery] = []
        while len(got) < 24:
            batch = await member.read()
            assert batch is not None
            got.extend(batch)
        assert sorted(d.record.position for d in got) == list(range(1, 25))

    run(tmp_path, scenario)
