"""One consumer-group member over the generated grpc.aio stubs, with no client
library in between (so that a client's bug cannot hide a server's)."""

from __future__ import annotations

import asyncio

import grpc

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc


class WireMember:
    """A Subscribe stream: ``join``, then ``read`` batches of deliveries and
    ``ack`` / ``nack``; ``kill`` cancels the stream (like a process that
    dies), ``leave`` half-closes it and reads on until the server ends it."""

    def __init__(
        self,
        stub: pb_grpc.StreamsServiceStub,
        space: str,
        group: str,
        name: str = "",
        max_in_flight: int = 0,
        timeout: float | None = None,
    ) -> None:
        self.join_request = pb.SubscribeJoin(
            space=space, group=group, member_name=name, max_in_flight=max_in_flight
        )
        self.call = stub.Subscribe(timeout=timeout)
        self.member_id = ""
        self.killed = False
        self._lock = asyncio.Lock()

    async def join(self) -> str:
        """Sends the join and reads ``joined``; returns the member id."""
        await self.send(pb.SubscribeRequest(join=self.join_request))
        first = await self.call.read()
        if first is grpc.aio.EOF:
            raise AssertionError("the stream ended before joined")
        if first.WhichOneof("kind") != "joined":
            raise AssertionError(f"the first response is not joined: {first}")
        self.member_id = first.joined.member_id
        return self.member_id

    async def read(self) -> list[pb.Delivery] | None:
        """The next batch of deliveries; None once the stream ended with OK.
        Raises grpc.aio.AioRpcError when it ended otherwise."""
        response = await self.call.read()
        if response is grpc.aio.EOF:
            return None
        if response.WhichOneof("kind") != "deliveries":
            raise AssertionError(f"a response after joined that is not deliveries: {response}")
        if not response.deliveries.deliveries:
            raise AssertionError("an empty deliveries message")
        return list(response.deliveries.deliveries)

    async def send(self, request: pb.SubscribeRequest) -> None:
        async with self._lock:  # one write at a time on a stream
            await self.call.write(request)

    async def ack(self, positions: list[int]) -> None:
        await self.send(pb.SubscribeRequest(ack=pb.SubscribeAck(positions=positions)))

    async def nack(self, positions: list[int], action: pb.NackAction, reason: str = "") -> None:
        nack = pb.SubscribeNack(positions=positions, action=action, reason=reason)
        await self.send(pb.SubscribeRequest(nack=nack))

    def kill(self) -> None:
        self.killed = True
        self.call.cancel()

    async def leave(self) -> None:
        """Half-closes the stream; the reader sees the server end it."""
        async with self._lock:
            await self.call.done_writing()

    async def code(self) -> grpc.StatusCode:
        return await self.call.code()
