"""Operating consumer groups: per-group metrics at /metrics, and keepalive
(--keepalive-seconds, --keepalive-timeout-seconds), by which the server
notices a client whose machine or network died: its streams end, and a group
member's records go to another member."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams import config
from streams.auth import TokenAuth
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.inproc import InProcessServer

from .helpers import bearer, produce, run_python, sample, scrape, wait_until, write_tokens

WAIT = 10.0


# -- options -------------------------------------------------------------------


def test_keepalive_options_have_defaults_and_variables() -> None:
    default = config.parse([], environ={})
    assert (default.keepalive_seconds, default.keepalive_timeout_seconds) == (30.0, 10.0)
    flags = config.parse(["--keepalive-seconds", "0.5", "--keepalive-timeout-seconds", "2"], {})
    env = config.parse(
        [], {"STREAMS_KEEPALIVE_SECONDS": "0.5", "STREAMS_KEEPALIVE_TIMEOUT_SECONDS": "2"}
    )
    assert flags == env
    assert (flags.keepalive_seconds, flags.keepalive_timeout_seconds) == (0.5, 2.0)


@pytest.mark.parametrize("flag", ["--keepalive-seconds", "--keepalive-timeout-seconds"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon", "0.0001"])
def test_a_bad_keepalive_option_ends_the_start(flag: str, value: str) -> None:
    result = run_python(["server.py", f"{flag}={value}"])
    assert result.returncode == 2, result.stderr
    assert flag in result.stderr and value in result.stderr
    assert "Traceback" not in result.stderr


# -- keepalive -------------------------------------------------------------------


class FreezableProxy:
    """A TCP proxy in front of the server that can stop forwarding without
    closing anything: to the server, its client looks like a machine that
    died (no FIN, no RST, no answer to pings)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._running = threading.Event()
        self._running.set()
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._running.clear()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target)
                self._sockets += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = source.recv(65536)
                # Frozen: what was read is dropped, and nothing more is read.
                if not data or not self._running.is_set():
                    self._running.wait()
                    return
                sink.sendall(data)

    def close(self) -> None:
        self._running.set()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    with InProcessServer(
        tmp_path / "data",
        metrics_listen="127.0.0.1:0",
        keepalive_seconds=0.2,
        keepalive_timeout_seconds=0.5,
    ) as srv:
        yield srv


@pytest.fixture
def proxy(server: InProcessServer) -> Iterator[FreezableProxy]:
    proxy = FreezableProxy(("127.0.0.1", server.port))
    yield proxy
    proxy.close()


def test_a_dead_client_s_follow_stream_ends(server: InProcessServer, proxy: FreezableProxy) -> None:
    port = server.server.metrics_port
    produce(server.stub, "s", "a", [b"x"])
    with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
        stub = pb_grpc.StreamsServiceStub(channel)
        follow = stub.Consume(pb.ConsumeRequest(space="s", follow=True), timeout=60)
        next(follow)
        assert sample(scrape(port), "streams_active_consume_streams") == 1
        proxy.freeze()
        wait_until(
            lambda: sample(scrape(port), "streams_active_consume_streams") == 0,
            WAIT,
            "the server to end the dead client's stream",
        )
        follow.cancel()


def _join(stub: pb_grpc.StreamsServiceStub, space: str) -> tuple[queue.Queue, object]:
    """A member of group `g`; its responses go to the queue."""
    requests: queue.Queue[pb.SubscribeRequest | None] = queue.Queue()
    requests.put(pb.SubscribeRequest(join=pb.SubscribeJoin(space=space, group="g")))
    call = stub.Subscribe(iter(requests.get, None), timeout=60)
    inbox: queue.Queue[pb.SubscribeResponse] = queue.Queue()

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in call:
                inbox.put(response)

    threading.Thread(target=read, daemon=True).start()
    assert inbox.get(timeout=WAIT).WhichOneof("kind") == "joined"
    return inbox, call


def test_a_dead_member_s_records_go_to_another_member(
    server: InProcessServer, proxy: FreezableProxy
) -> None:
    stub = server.stub
    produce(stub, "work", "a", [b"x"])
    stub.CreateGroup(pb.CreateGroupRequest(group=pb.Group(name="g", space="work")))
    with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
        dying, dying_call = _join(pb_grpc.StreamsServiceStub(channel), "work")
        first = dying.get(timeout=WAIT).deliveries.deliveries[0]
        assert first.attempt == 1
        alive, alive_call = _join(stub, "work")
        proxy.freeze()
        again = alive.get(timeout=WAIT).deliveries.deliveries[0]
        assert (again.record.position, again.attempt) == (first.record.position, 2)
        for call in (dying_call, alive_call):
            call.cancel()  # type: ignore[attr-defined]


# -- metrics -------------------------------------------------------------------


def test_per_group_metrics(server: InProcessServer) -> None:
    port, stub = server.server.metrics_port, server.stub
    produce(stub, "m", "a", [b"1", b"2"])
    produce(stub, "m", "b", [b"3"])
    stub.CreateGroup(pb.CreateGroupRequest(group=pb.Group(name="g", space="m")))
    inbox, call = _join(stub, "m")
    held: list[pb.Delivery] = []
    while len(held) < 2:
        held += inbox.get(timeout=WAIT).deliveries.deliveries
    labels = {"space": "m", "group": "g"}
    samples = scrape(port)
    assert sample(samples, "streams_group_members", **labels) == 1
    assert sample(samples, "streams_group_in_flight", **labels) == 2
    assert sample(samples, "streams_group_lag", **labels) == 3
    assert sample(samples, "streams_group_delivered_records_total", **labels) == 2
    assert sample(samples, "streams_group_metrics_truncated") == 0
    call.cancel()  # type: ignore[attr-defined]
    # The member left: the group has no live side, so no series.
    wait_until(
        lambda: ("streams_group_members", frozenset(labels.items())) not in scrape(port),
        WAIT,
        "the group's series to go with its last member",
    )


def test_per_group_counters_follow_acks_nacks_and_parks(server: InProcessServer) -> None:
    port, stub = server.server.metrics_port, server.stub
    produce(stub, "c", "a", [b"1", b"2"])
    produce(stub, "c", "b", [b"3"])
    stub.CreateGroup(pb.CreateGroupRequest(group=pb.Group(name="g", space="c")))
    requests: queue.Queue[pb.SubscribeRequest | None] = queue.Queue()
    requests.put(pb.SubscribeRequest(join=pb.SubscribeJoin(space="c", group="g")))
    call = stub.Subscribe(iter(requests.get, None), timeout=60)
    responses = iter(call)
    assert next(responses).WhichOneof("kind") == "joined"

    def take(count: int) -> list[pb.Delivery]:
        got: list[pb.Delivery] = []
        while len(got) < count:
            got += next(responses).deliveries.deliveries
        return got

    first = {d.record.segment: d.record.position for d in take(2)}
    requests.put(pb.SubscribeRequest(nack=pb.SubscribeNack(positions=[first["a"]])))
    assert take(1)[0].attempt == 2
    requests.put(pb.SubscribeRequest(ack=pb.SubscribeAck(positions=[first["a"]])))
    park = pb.SubscribeNack(positions=[first["b"]], action=pb.NACK_ACTION_PARK)
    requests.put(pb.SubscribeRequest(nack=park))
    assert take(1)[0].record.sequence == 2
    labels = {"space": "c", "group": "g"}

    def settled() -> dict | None:
        samples = scrape(port)
        key = ("streams_group_parked_records_total", frozenset(labels.items()))
        return samples if samples.get(key) == 1 else None

    samples = wait_until(settled, WAIT, "the park to be counted")
    assert sample(samples, "streams_group_delivered_records_total", **labels) == 4
    assert sample(samples, "streams_group_redelivered_records_total", **labels) == 1
    assert sample(samples, "streams_group_acked_records_total", **labels) == 1
    # 1 acked, 2 in flight, 3 parked: acked_through 1 of 3.
    assert sample(samples, "streams_group_lag", **labels) == 2
    assert sample(samples, "streams_group_in_flight", **labels) == 1
    call.cancel()
    requests.put(None)


# -- auth ------------------------------------------------------------------------


def test_a_token_reload_ends_a_member_it_no_longer_allows(tmp_path: Path) -> None:
    reader = {"token": "reader", "spaces": ["work"], "access": ["read"]}
    admin = {"token": "admin", "spaces": ["*"], "access": ["read", "write"]}
    path = write_tokens(tmp_path / "tokens.json", [reader, admin])
    with InProcessServer(tmp_path / "data", auth=TokenAuth.load(path)) as srv:
        produce(srv.stub, "work", "a", [b"x"], call_metadata=bearer("admin"))
        group = pb.Group(name="g", space="work")
        srv.stub.CreateGroup(pb.CreateGroupRequest(group=group), metadata=bearer("admin"))
        requests: queue.Queue[pb.SubscribeRequest | None] = queue.Queue()
        requests.put(pb.SubscribeRequest(join=pb.SubscribeJoin(space="work", group="g")))
        call = srv.stub.Subscribe(iter(requests.get, None), metadata=bearer("reader"), timeout=30)
        responses = iter(call)
        assert next(responses).WhichOneof("kind") == "joined"
        assert next(responses).deliveries.deliveries[0].record.payload == b"x"
        write_tokens(path, [admin, {**reader, "spaces": ["other"]}])

        async def reload() -> None:
            srv.server.reload_auth()

        srv.run(reload())
        with pytest.raises(grpc.RpcError) as ended:
            next(responses)
        assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED, ended.value.details()
        assert "'work'" in (ended.value.details() or "")
        requests.put(None)
        # The member left (its record goes to the next member).
        info = pb.GetGroupRequest(space="work", group="g")
        wait_until(
            lambda: not srv.stub.GetGroup(info, metadata=bearer("admin")).info.members,
            WAIT,
            "the revoked member to leave",
        )
