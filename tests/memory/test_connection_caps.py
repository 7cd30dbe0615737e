"""The caps on what gRPC core may be reading at once, applied: connections
beyond --max-connections are closed as they come, and a connection carries at
most --max-streams-per-connection calls (advertised in HTTP/2 SETTINGS; a
client queues the ones beyond it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import h2.settings
import pytest

from streams.limits import Limits
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.memory.stalled import StalledClient
from tests.ops.helpers import wait_until
from tests.support.inproc import InProcessServer

# Each channel its own connection (not one shared by every channel to the target).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
SHORT = 1.0  # how long a call that cannot start is given before it is known to wait


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[InProcessServer]:
    limits = Limits(max_connections=2, max_streams_per_connection=3)
    with InProcessServer(tmp_path / "data", limits=limits) as server:
        yield server


def list_spaces(channel: grpc.Channel) -> None:
    pb_grpc.StreamsServiceStub(channel).ListSpaces(pb.ListSpacesRequest(), timeout=5)


def test_connections_beyond_the_cap_are_closed(capped: InProcessServer) -> None:
    # The fixture's own channel is not connected yet: these two are the only ones.
    first, second, third = (
        grpc.insecure_channel(capped.target, options=OWN_CONNECTION) for _ in range(3)
    )
    try:
        list_spaces(first)
        list_spaces(second)
        with pytest.raises(grpc.RpcError) as caught:
            list_spaces(third)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        first.close()
        # Once the server has seen it go, a new connection is let in.

        def connects() -> bool:
            with grpc.insecure_channel(capped.target, options=OWN_CONNECTION) as channel:
                try:
                    list_spaces(channel)
                except grpc.RpcError:
                    return False
                return True

        wait_until(connects, timeout=10, what="a connection let in after one closed")
    finally:
        for channel in (first, second, third):
            channel.close()


def test_calls_per_connection_are_capped(capped: InProcessServer) -> None:
    raw = StalledClient(capped.target)
    try:
        assert raw.settings.wait(5), "no SETTINGS from the server"
        assert raw.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 3
    finally:
        raw.close()
    with grpc.insecure_channel(capped.target, options=OWN_CONNECTION) as channel:
        stub = pb_grpc.StreamsServiceStub(channel)
        follows = []
        for _ in range(3):
            call = stub.Consume(pb.ConsumeRequest(space="s", from_end=True, follow=True))
            call.initial_metadata()
            follows.append(call)
        # A fourth call on the connection waits for one of the three to end.
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListSpaces(pb.ListSpacesRequest(), timeout=SHORT)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        waiting = stub.ListSpaces.future(pb.ListSpacesRequest(), timeout=10)
        follows[0].cancel()
        waiting.result()
        for call in follows:
            call.cancel()
