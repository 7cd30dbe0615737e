"""``--workers N``: the option, and the process model of streams.workers.pool
(one writer, N fronts on one port) as the real server runs it.

The heavier guarantees over workers (crash harness, contract suite, follow
without gap across fronts) are tests/workers/test_guarantees*.py's."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams import config
from streams.limits import MIN_MEMORY_BUDGET_BYTES
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from streams.workers import pool as pool_module
from tests.ops.helpers import scrape
from tests.support.fronts import channels_per_front, listening_inodes, socket_inodes
from tests.support.process import ServerProcess, free_port
from tests.support.waiting import wait_until

DEADLINE = 30.0

# -- the option -----------------------------------------------------------------


def parse_error(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]) -> str:
    with pytest.raises(SystemExit) as exited:
        config.parse(argv, env)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_workers_default_is_one_per_core() -> None:
    assert config.parse([], {}).workers == min(config.cores(), config.MAX_WORKERS)
    # 0 says the same explicitly.
    assert config.parse(["--workers", "0"], {}).workers == config.parse([], {}).workers


def test_workers_from_flag_and_environment() -> None:
    assert config.parse(["--workers", "1"], {}).workers == 1
    assert config.parse([], {"STREAMS_WORKERS": "3"}).workers == 3
    assert config.parse(["--workers", "2"], {"STREAMS_WORKERS": "3"}).workers == 2


def test_default_workers_stay_within_the_memory_budget() -> None:
    # A budget with room for the writer and two fronts only: the default takes 2, not the cores.
    budget = 3 * MIN_MEMORY_BUDGET_BYTES
    assert config.default_workers(budget) == min(config.cores(), 2)
    assert config.default_workers(MIN_MEMORY_BUDGET_BYTES) == 1


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000", None), ("150000 100000", 2), ("100000 100000", 1), ("garbage", None)],
)
def test_cores_follow_the_cgroup_quota(tmp_path: Path, cpu_max: str, expected: int | None) -> None:
    allowed = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    want = allowed if expected is None else min(allowed, expected)
    assert config.cores(tmp_path / "cpu.max") == want
    assert config.cores(tmp_path / "missing") == allowed


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--workers", "x"], {}, "--workers: 'x' is not a whole number"),
        (["--workers", "-1"], {}, "'-1': give a number of processes in 1-256"),
        (["--workers", "257"], {}, "'257': give a number of processes in 1-256"),
        ([], {"STREAMS_WORKERS": "two"}, "STREAMS_WORKERS='two'"),
        (
            ["--workers", "4", "--memory-budget-bytes", str(4 * MIN_MEMORY_BUDGET_BYTES)],
            {},
            "--workers 4: --memory-budget-bytes",
        ),
    ],
)
def test_bad_workers_values_are_refused_naming_them(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str], named: str
) -> None:
    assert named in parse_error(capsys, argv, env)


@pytest.mark.parametrize(
    "option", ["front-start-seconds", "front-exit-seconds", "front-scrape-seconds"]
)
def test_front_bounds_are_options(capsys: pytest.CaptureFixture[str], option: str) -> None:
    # Review F4: these were constants of streams.workers.
    field = option.replace("-", "_")
    variable = "STREAMS_" + field.upper()
    assert getattr(config.parse([f"--{option}", "7.5"], {}), field) == 7.5
    assert getattr(config.parse([], {variable: "2"}), field) == 2.0
    assert f"--{option}: 'soon' is not a number of seconds" in parse_error(
        capsys, [f"--{option}", "soon"], {}
    )
    assert f"{variable}='-1'" in parse_error(capsys, [], {variable: "-1"})


def test_a_start_past_front_start_seconds_stops_the_server(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data", workers=2, env={"STREAMS_FRONT_START_SECONDS": "0.001"}
    )
    with server:
        server.spawn(stdout=subprocess.DEVNULL)
        assert server.wait() == 1
        assert "did not all start within --front-start-seconds 0.0" in server.stderr()


# -- the processes --------------------------------------------------------------


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", workers=2, flags=["--shutdown-grace", "5"])
    try:
        yield server
    finally:
        server.close()


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie not yet reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def produce(stub: pb_grpc.StreamsServiceStub, space: str, *payloads: bytes) -> None:
    records = [pb.RecordInput(payload=p) for p in payloads]
    stub.Produce(
        pb.ProduceRequest(space=space, writes=[pb.SegmentWrite(segment="s", records=records)]),
        timeout=DEADLINE,
    )


def test_workers_1_is_one_process(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", workers=1).start() as server:
        produce(server.stub, "orders", b"a")
        assert server.children() == []


def test_every_front_serves_the_printed_port(pool: ServerProcess) -> None:
    pool.start()
    fronts = pool.children()
    assert len(fronts) == 2
    listening = listening_inodes(pool.port)
    assert listening, f"nothing listens on {pool.port}"
    for front in fronts:
        assert socket_inodes(front) & listening, f"front {front} does not listen on {pool.port}"
    # The writer only holds the port (bound, not listening): every connection goes to a front.
    assert not socket_inodes(pool.pid) & listening


def test_a_port_held_by_another_workers_server_is_refused(
    pool: ServerProcess, tmp_path: Path
) -> None:
    # Both would set SO_REUSEPORT: without care the second would silently share the port.
    pool.start()
    with ServerProcess(tmp_path / "second", workers=2, port=pool.port) as second:
        second.spawn(stdout=subprocess.DEVNULL)
        assert second.wait() == 2
        refused = f"--listen '127.0.0.1:{pool.port}': cannot listen there: Address already in use"
        assert refused in second.stderr()


def test_a_port_reserved_by_another_writer_is_refused(tmp_path: Path) -> None:
    # Review: two reservations do not refuse each other (neither listens), so a
    # second writer started while the first one's fronts were starting shared
    # the port, and the kernel split connections between two stores.
    port, held, lock = pool_module.reserve(f"127.0.0.1:{free_port()}")
    try:
        with ServerProcess(tmp_path / "data", workers=2, port=port) as second:
            second.spawn(stdout=subprocess.DEVNULL)
            assert second.wait() == 2
            assert "another Streams server holds it" in second.stderr()
    finally:
        for sock in held:
            sock.close()
        lock.release()


def test_two_workers_serve_produce_consume_follow_and_groups(pool: ServerProcess) -> None:
    pool.start()
    stub = pool.stub
    stub.CreateGroup(pb.CreateGroupRequest(group=pb.Group(space="orders", name="g")))
    follower = stub.Consume(pb.ConsumeRequest(space="orders", follow=True, limit=3))
    produce(stub, "orders", b"a", b"b")
    produce(stub, "orders", b"c")
    got = [r.payload for response in follower for r in response.records]
    assert got == [b"a", b"b", b"c"]
    # Fresh connections (the kernel spreads them over the fronts) all see the same store.
    for _ in range(4):
        with grpc.insecure_channel(pool.target) as channel:
            other = pb_grpc.StreamsServiceStub(channel)
            consumed = other.Consume(pb.ConsumeRequest(space="orders"), timeout=DEADLINE)
            assert [r.payload for response in consumed for r in response.records] == got
            listed = other.ListGroups(pb.ListGroupsRequest(space="orders"), timeout=DEADLINE)
            assert [g.name for g in listed.groups] == ["g"]
    # A member over the front gets the records from the writer's registry.
    requests = iter([pb.SubscribeRequest(join=pb.SubscribeJoin(space="orders", group="g"))])
    stream = stub.Subscribe(requests, timeout=DEADLINE)
    assert next(stream).WhichOneof("kind") == "joined"
    first = next(stream)
    assert first.deliveries.deliveries[0].record.payload == b"a"
    stream.cancel()


def test_the_configured_limits_reach_the_store_host(tmp_path: Path) -> None:
    # The fronts and the host size their frames from the same limits, or a front refuses.
    flags = ["--max-request-bytes", str(2 << 20), "--max-records-per-produce", "500"]
    with ServerProcess(tmp_path / "data", workers=2, flags=flags).start() as server:
        produce(server.stub, "orders", *[b"x" * 1000] * 500)


def test_sigterm_stops_the_fronts_then_the_writer(pool: ServerProcess) -> None:
    pool.start()
    produce(pool.stub, "orders", b"a")
    fronts = pool.children()
    folder = private_folder(fronts[0])
    assert pool.stop(signal.SIGTERM) == 0
    assert all(gone(pid) for pid in fronts)
    assert not folder.exists()
    assert "stopped" in pool.stderr()
    # What was acknowledged is there after a restart, on one process.
    restarted = ServerProcess(pool.data, workers=1).start()
    with restarted:
        consumed = restarted.stub.Consume(pb.ConsumeRequest(space="orders"))
        assert [r.payload for response in consumed for r in response.records] == [b"a"]


def test_sighup_reaches_every_front(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    entry = {"token": "old", "spaces": ["*"], "access": ["read", "write"]}
    tokens.write_text(json.dumps({"tokens": [entry]}))
    server = ServerProcess(tmp_path / "data", workers=2, flags=["--auth-tokens", str(tokens)])
    with server.start():
        tokens.write_text(json.dumps({"tokens": [{**entry, "token": "new"}]}))
        server.send(signal.SIGHUP)
        # The writer and both fronts each log their reload.
        wait_until(
            lambda: server.stderr().count("SIGHUP: reloaded 1 tokens") == 3,
            timeout=DEADLINE,
            what="three reloads (writer and two fronts)",
        )
        # Whichever front a new connection reaches, only the new token is taken.
        for _ in range(4):
            with grpc.insecure_channel(server.target) as channel:
                stub = pb_grpc.StreamsServiceStub(channel)
                request = pb.ListSpacesRequest()
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ListSpaces(request, metadata=[("authorization", "Bearer old")])
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                stub.ListSpaces(request, metadata=[("authorization", "Bearer new")])


def test_a_sighup_while_the_fronts_start_reaches_them_once_they_serve(tmp_path: Path) -> None:
    # Review: the writer passed SIGHUP on at once; a front not yet serving died
    # of its default action and the whole server stopped with status 255.
    tokens = tmp_path / "tokens.json"
    entry = {"token": "t", "spaces": ["*"], "access": ["read", "write"]}
    tokens.write_text(json.dumps({"tokens": [entry]}))
    server = ServerProcess(tmp_path / "data", workers=2, flags=["--auth-tokens", str(tokens)])
    with server:
        proc = server.spawn()
        wait_until(lambda: len(server.children()) == 2, timeout=DEADLINE, what="two fronts")
        server.send(signal.SIGHUP)
        assert proc.stdout is not None
        assert "listening on" in proc.stdout.readline(), server.stderr()[-3000:]
        wait_until(
            lambda: server.stderr().count("SIGHUP: reloaded 1 tokens") >= 3,
            timeout=DEADLINE,
            what="three reloads (writer and two fronts)",
        )
        assert server.stderr().count("SIGHUP: reloaded 1 tokens") == 3


def test_a_front_killed_stops_the_server_with_status_1(pool: ServerProcess) -> None:
    pool.start()
    victim, survivor = pool.children()
    os.kill(victim, signal.SIGKILL)
    assert pool.wait() == 1
    assert gone(survivor)
    assert "exited unexpectedly" in pool.stderr()


def test_a_writer_killed_takes_the_fronts_with_it(pool: ServerProcess) -> None:
    pool.start()
    fronts = pool.children()
    folder = private_folder(fronts[0])
    pool.kill()
    wait_until(lambda: all(gone(pid) for pid in fronts), timeout=DEADLINE, what="fronts gone")
    # The writer could not remove its folder of sockets: a front did.
    assert not folder.exists()


def test_a_writer_killed_while_its_fronts_start_leaves_no_folder(tmp_path: Path) -> None:
    # Review F2: fronts still starting failed to connect and exited, leaving the
    # sockets (and the page-token key) of the dead writer in TMPDIR.
    server = ServerProcess(tmp_path / "data", workers=2)
    with server:
        server.spawn()
        fronts = wait_until(
            lambda: [pid for pid in server.children() if b"--host-socket" in cmdline(pid)],
            timeout=DEADLINE,
            what="the fronts started",
        )
        folder = private_folder(fronts[0])
        server.kill()  # before `listening on`: the fronts are importing or connecting
        assert server.proc is not None and server.proc.stdout is not None
        assert "listening on" not in server.proc.stdout.read()
        wait_until(lambda: all(gone(pid) for pid in fronts), timeout=DEADLINE, what="fronts gone")
        assert not folder.exists()


def test_the_page_token_key_is_never_on_disk(pool: ServerProcess) -> None:
    # Review F2: the writer's random key was a file in the private folder.
    pool.start()
    folder = private_folder(pool.children()[0])
    assert sorted(path.name for path in folder.iterdir()) == ["host.sock", "writer.sock"]
    # Every front signs with the writer's key: a listing goes on through any front.
    for space in ("a", "b", "c"):
        produce(pool.stub, space, b"x")
    first = pool.stub.ListSpaces(pb.ListSpacesRequest(page_size=1), timeout=DEADLINE)
    for _ in range(4):  # fresh connections: the kernel spreads them over the fronts
        with grpc.insecure_channel(pool.target) as channel:
            stub = pb_grpc.StreamsServiceStub(channel)
            request = pb.ListSpacesRequest(page_size=1, page_token=first.next_page_token)
            assert [s.name for s in stub.ListSpaces(request, timeout=DEADLINE).spaces] == ["b"]


def test_only_the_fronts_reach_the_writers_sockets(pool: ServerProcess) -> None:
    # Review F1: any process of the uid could call the store host (pickles, any
    # store method) and the writer's server (no TLS, no front in between).
    pool.start()
    folder = private_folder(pool.children()[0])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as intruder:
        intruder.settimeout(DEADLINE)
        intruder.connect(str(folder / "host.sock"))
        assert intruder.recv(1) == b""  # closed by the host before anything is read
    with grpc.insecure_channel(f"unix:{folder / 'writer.sock'}") as channel:
        direct = pb_grpc.StreamsServiceStub(channel)
        for call in (
            lambda: produce(direct, "orders", b"x"),
            lambda: direct.ListGroups(pb.ListGroupsRequest(space="orders"), timeout=DEADLINE),
            lambda: direct.DeleteSpace(pb.DeleteSpaceRequest(space="orders"), timeout=DEADLINE),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A client cannot pass itself off as a front: the proxy drops its private key.
        secret = (("streams-front-secret", "guess"),)
        with pytest.raises(grpc.RpcError) as refused:
            direct.ListGroups(pb.ListGroupsRequest(space="o"), metadata=secret, timeout=DEADLINE)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The fronts themselves still reach both.
    produce(pool.stub, "orders", b"a")
    pool.stub.CreateGroup(pb.CreateGroupRequest(group=pb.Group(space="orders", name="g")))
    listed = pool.stub.ListGroups(pb.ListGroupsRequest(space="orders"), metadata=secret)
    assert [g.name for g in listed.groups] == ["g"]


def test_delete_space_through_one_front_empties_another_fronts_window(
    pool: ServerProcess,
) -> None:
    # Review F5: the proxy answered DeleteSpace before the fronts' windows had
    # dropped the space; only timing kept a Consume on another front from
    # reading deleted records.
    pool.start()
    a, b = pool.children()
    channels = channels_per_front(pool.port, [a, b])
    with channels[a][0] as on_a, channels[b][0] as on_b:
        stub_a, stub_b = pb_grpc.StreamsServiceStub(on_a), pb_grpc.StreamsServiceStub(on_b)
        for round_ in range(20):
            space = f"s{round_}"
            # A follower on B keeps the space's records in B's window.
            follower = stub_b.Consume(pb.ConsumeRequest(space=space, follow=True, limit=5))
            follower.initial_metadata()
            produce(stub_a, space, *[b"r%d" % n for n in range(5)])
            assert sum(len(response.records) for response in follower) == 5
            follower2 = stub_b.Consume(
                pb.ConsumeRequest(space=space, follow=True, from_offset=1), timeout=DEADLINE
            )
            follower2.initial_metadata()
            stub_a.DeleteSpace(pb.DeleteSpaceRequest(space=space), timeout=DEADLINE)
            consumed = stub_b.Consume(pb.ConsumeRequest(space=space, from_offset=1))
            assert [r for response in consumed for r in response.records] == [], round_
            follower2.cancel()


def dead_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))  # the file stays; nobody listens: connections are refused


def test_folders_of_killed_writers_are_swept_at_start(tmp_path: Path) -> None:
    # Review F2: 60 such folders had piled up in /tmp; each held a page-token key.
    # A short TMPDIR: a socket path has at most 107 bytes, and pytest's temporary
    # folders under xdist are longer than that leaves room for.
    temp = Path(tempfile.mkdtemp(prefix="sw-"))
    try:
        _sweep_test(tmp_path, temp)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _sweep_test(tmp_path: Path, temp: Path) -> None:
    dead, starting = temp / "streams-workers-dead", temp / "streams-workers-starting"
    dead.mkdir(mode=0o700)
    starting.mkdir(mode=0o700)
    for name in ("host.sock", "writer.sock"):
        dead_socket(dead / name)
    (dead / "page-token-key").write_text("k" * 64)
    # Another writer starting: its server listens, its host socket is not made yet.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(starting / "writer.sock"))
        live.listen()
        server = ServerProcess(tmp_path / "data", workers=2, env={"TMPDIR": str(temp)})
        with server.start():
            assert not dead.exists()
            assert starting.exists()
            assert f"removed {dead}, left by a writer that was killed" in server.stderr()


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def private_folder(front: int) -> Path:
    """The writer's folder of Unix sockets, as a front's command line names it."""
    argv = cmdline(front).split(b"\0")
    folder = Path(argv[argv.index(b"--host-socket") + 1].decode()).parent
    assert folder.stat().st_mode & 0o777 == 0o700
    return folder


def test_the_writers_metrics_count_every_fronts_calls(tmp_path: Path) -> None:
    flags = ["--metrics-listen", "127.0.0.1:0"]
    with ServerProcess(tmp_path / "data", workers=2, flags=flags).start() as server:
        found = wait_until(
            lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", server.stderr()),
            timeout=DEADLINE,
            what="the metrics address in the log",
        )
        calls = 6
        for _ in range(calls):  # fresh connections: the kernel spreads them over the fronts
            with grpc.insecure_channel(server.target) as channel:
                produce(pb_grpc.StreamsServiceStub(channel), "orders", b"a")
        samples = scrape(int(found.group(1)))
        produced = {
            dict(labels)["front"]: value
            for (name, labels), value in samples.items()
            if name == "streams_requests_total"
            and ("method", "Produce") in labels
            and ("code", "OK") in labels
        }
        assert set(produced) <= {"0", "1"} and sum(produced.values()) == calls
        # The store's series are the writer's, once, without a front label.
        writable = [key[1] for key in samples if key[0] == "streams_store_writable"]
        assert writable == [frozenset()]
