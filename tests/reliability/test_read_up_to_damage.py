"""A read that reaches a damaged table block delivers every record before it,
then DATA_LOSS naming the first offset it did not deliver.

The damage is made as in test_corruption.py: records larger than a table
block, flushed by RocksDB itself, one byte flipped inside one record's payload
(found by searching the table files for it). The reads ask for all the records
before the damage in one response (or in several small ones), so a server that
drops what it read before the damage, or a response it yielded before the
error, fails here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
import rocksdict

from streams.v1 import streams_pb2 as pb
from tests.reliability.test_corruption import DEADLINE, SPACE, produce
from tests.support.damage import flip_byte
from tests.support.process import ServerProcess

RECORDS = 60
DAMAGED = 41  # the offset of the damaged record, in its segment and in its space


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("damaged")
    data = tmp / "data"
    server = ServerProcess(data, tmp / "server.log")
    server.start()
    # Larger than a table block (4 KiB): each record in a block of its own.
    payloads = [f"{i}:".encode() + os.urandom(5000) for i in range(RECORDS)]
    for payload in payloads:
        produce(server.stub, "a", payload)
    assert server.stop() == 0
    db = rocksdict.Rdict(str(data), rocksdict.Options(raw_mode=True))
    db.flush(True)
    db.close()
    flipped = 0
    for sst in data.glob("*.sst"):
        at = sst.read_bytes().find(payloads[DAMAGED - 1])
        while at != -1:
            flip_byte(sst, at + 100)
            flipped += 1
            at = sst.read_bytes().find(payloads[DAMAGED - 1], at + 1)
    assert flipped == 2, "expected the segment and the space copy"
    server.start()
    yield server
    server.stop()


def read(server: ServerProcess, **fields: object) -> tuple[list[int], grpc.RpcError | None]:
    """Offsets of the records a Consume delivers, and the error that ended it."""
    request = pb.ConsumeRequest(space=SPACE, **fields)  # type: ignore[arg-type]
    by_segment = bool(request.segment)
    offsets: list[int] = []
    try:
        for response in server.stub.Consume(request, timeout=DEADLINE):
            offsets += [r.sequence if by_segment else r.position for r in response.records]
    except grpc.RpcError as exc:
        return offsets, exc
    return offsets, None


@pytest.mark.parametrize(
    "fields",
    [
        {"segment": "a"},  # max_batch 0: up to 1,000 records per response, all 60 fit one
        {},
        {"segment_prefix": "a"},
        {"segment": "a", "max_batch": 7},  # several responses, the last just before the error
    ],
    ids=["segment", "space", "segment_prefix", "small_responses"],
)
def test_a_read_delivers_every_record_before_the_damage(
    damaged: ServerProcess, fields: dict[str, object]
) -> None:
    offsets, error = read(damaged, **fields)
    assert offsets == list(range(1, DAMAGED))
    assert error is not None and error.code() is grpc.StatusCode.DATA_LOSS, error
    assert f"offset {DAMAGED} cannot be read" in (error.details() or ""), error.details()


def test_the_records_after_the_damage_stay_readable(damaged: ServerProcess) -> None:
    offsets, error = read(damaged, segment="a", from_offset=DAMAGED + 1)
    assert error is None and offsets == list(range(DAMAGED + 1, RECORDS + 1))
