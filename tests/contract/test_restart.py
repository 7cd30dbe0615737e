"""Everything acknowledged comes back after a restart (SIGTERM) and after kill -9."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from tests.support.process import ServerProcess

from .helpers import (
    Stub,
    assert_status,
    consume_all,
    produce,
    produce_writes,
    rec,
    ts_key,
    write,
)
from .launch import Launcher


def _snapshot(stub: Stub, spaces: list[str]) -> dict[str, object]:
    snap: dict[str, object] = {}
    for sp in spaces:
        snap[f"records:{sp}"] = consume_all(stub, sp)
        snap[f"segments:{sp}"] = list(stub.ListSegments(pb.ListSegmentsRequest(space=sp)).segments)
        snap[f"peek:{sp}"] = stub.Peek(pb.PeekRequest(space=sp)).record
    snap["spaces"] = list(stub.ListSpaces(pb.ListSpacesRequest()).spaces)
    return snap


def _fill(stub: Stub) -> dict[str, object]:
    """Writes to two spaces, with transaction ids and offsets; returns what to check."""
    tx1 = produce_writes(
        stub, "s1", [write("a", [rec(b"a1", {"k": "v"}), b"a2"]), write("b", [b"b1"])], "tx-1"
    )
    produce(stub, "s1", "a", [b"a3"])
    tx2 = produce(stub, "s2", "x/y:z", [b"big" * 100_000, b"small"], transaction_id="tx-2")
    produce(stub, "s2", "é€", [b"u"])
    stub.Commit(pb.CommitRequest(consumer="c1", space="s1", segment="a", offset=2))
    stub.Commit(pb.CommitRequest(consumer="c1", space="s1", offset=4))
    stub.Commit(pb.CommitRequest(consumer="c2", space="s2", segment="é€", offset=0))
    return {"tx1": tx1, "tx2": tx2}


def _check_after_restart(stub: Stub, before: dict[str, object], sent: dict[str, object]) -> None:
    after = _snapshot(stub, ["s1", "s2"])
    assert after == before

    # Offsets.
    def off(consumer: str, space: str, segment: str = "") -> int:
        req = pb.GetOffsetRequest(consumer=consumer, space=space, segment=segment)
        return stub.GetOffset(req).offset

    assert off("c1", "s1", "a") == 2
    assert off("c1", "s1") == 4
    assert off("c2", "s2", "é€") == 0
    assert_status(lambda: off("c2", "s1"), grpc.StatusCode.NOT_FOUND)
    assert [r.payload for r in consume_all(stub, "s1", "a", from_consumer="c1")] == [b"a3"]

    # Dedupe entries.
    tx1 = sent["tx1"]
    assert isinstance(tx1, pb.ProduceResponse)
    again = produce_writes(
        stub, "s1", [write("a", [rec(b"a1", {"k": "v"}), b"a2"]), write("b", [b"b1"])], "tx-1"
    )
    assert again.duplicate
    assert list(again.acks) == list(tx1.acks)
    assert (again.first_position, again.last_position) == (tx1.first_position, tx1.last_position)
    assert ts_key(again.timestamp) == ts_key(tx1.timestamp)
    assert_status(
        lambda: produce(stub, "s1", "a", [b"other"], transaction_id="tx-1"),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    tx2 = sent["tx2"]
    assert isinstance(tx2, pb.ProduceResponse)
    again2 = produce(stub, "s2", "x/y:z", [b"big" * 100_000, b"small"], transaction_id="tx-2")
    assert again2.duplicate
    assert list(again2.acks) == list(tx2.acks)
    assert _snapshot(stub, ["s1", "s2"]) == before

    # Numbering continues: sequences per segment, positions per space, timestamps.
    nxt = produce_writes(stub, "s1", [write("b", [b"b2"]), write("a", [b"a4"])])
    assert [(a.first_sequence, a.last_sequence) for a in nxt.acks] == [(2, 2), (4, 4)]
    assert (nxt.first_position, nxt.last_position) == (5, 6)
    recs = consume_all(stub, "s1")
    assert [r.position for r in recs] == [1, 2, 3, 4, 5, 6]
    stamps = [ts_key(r.timestamp) for r in recs]
    assert stamps == sorted(stamps)
    assert produce(stub, "s2", "é€", [b"u2"], expected_sequence=1).acks[0].first_sequence == 2
    assert produce(stub, "s2", "new").first_position == 5
    stub.Commit(
        pb.CommitRequest(consumer="c1", space="s1", segment="a", offset=4, expected_offset=2)
    )
    assert off("c1", "s1", "a") == 4


@pytest.mark.durable
@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_everything_survives_restart(fresh_server: ServerProcess, how: str) -> None:
    sent = _fill(fresh_server.stub)
    before = _snapshot(fresh_server.stub, ["s1", "s2"])
    if how == "sigterm":
        fresh_server.restart()
    else:
        fresh_server.kill9_and_restart()
    _check_after_restart(fresh_server.stub, before, sent)


@pytest.mark.durable
def test_two_restarts_in_a_row(fresh_server: ServerProcess) -> None:
    produce(fresh_server.stub, "s", "a", [b"1"])
    fresh_server.kill9_and_restart()
    produce(fresh_server.stub, "s", "a", [b"2"])
    fresh_server.restart()
    resp = produce(fresh_server.stub, "s", "b", [b"3"])
    assert resp.first_position == 3
    recs = consume_all(fresh_server.stub, "s")
    assert [(r.segment, r.sequence, r.position, r.payload) for r in recs] == [
        ("a", 1, 1, b"1"),
        ("a", 2, 2, b"2"),
        ("b", 1, 3, b"3"),
    ]


@pytest.mark.durable
def test_listen_and_data_from_environment(tmp_path: Path, launch: Launcher) -> None:
    # STREAMS_LISTEN=127.0.0.1:0, STREAMS_DATA=data_dir (and the backend's
    # STREAMS_* settings), no flags
    with launch(tmp_path, via_env=True) as server:
        assert not server.target.endswith(":0")
        produce(server.stub, "env", "s", [b"from env"])
        server.stop()
        server.via_env = False  # same directory, now through --data
        server.start()
        assert [r.payload for r in consume_all(server.stub, "env")] == [b"from env"]
