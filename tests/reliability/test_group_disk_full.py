"""Consumer groups on a full disk: a park that cannot be written.

The server's data directory is on a 64 MiB tmpfs (as in test_disk_full.py),
filled up while a member holds a record at its last attempt; the member's
retry nack then parks it, and that write fails. The contract: after
max_attempts deliveries the record is parked, never delivered again (no
attempt past max_attempts); once space is back it is parked, once.

Mounting needs root: elsewhere this skips, but fails when CI is set.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import grpc

from streams.v1 import streams_pb2 as pb
from tests.support.group_checker import PARKED
from tests.support.process import ServerProcess
from tests.support.waiting import wait_until

from .support import fill, tmpfs

SPACE, GROUP = "gdf", "g"
CALL = 30.0


def produce(server: ServerProcess, segment: str, payload: bytes) -> grpc.StatusCode:
    try:
        server.stub.Produce(
            pb.ProduceRequest(
                space=SPACE,
                writes=[
                    pb.SegmentWrite(segment=segment, records=[pb.RecordInput(payload=payload)])
                ],
            ),
            timeout=CALL,
        )
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_a_park_that_cannot_be_written_is_not_delivered_again(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "64m") as mount:
        server = ServerProcess(mount / "data", tmp_path / "server.log")
        server.start()
        try:
            group = pb.Group(name=GROUP, space=SPACE, max_attempts=1)
            server.stub.CreateGroup(pb.CreateGroupRequest(group=group), timeout=CALL)
            assert produce(server, "s", b"p" * 512 * 1024) is grpc.StatusCode.OK
            outbox: queue.Queue[pb.SubscribeRequest | None] = queue.Queue()
            outbox.put(pb.SubscribeRequest(join=pb.SubscribeJoin(space=SPACE, group=GROUP)))
            stream = server.stub.Subscribe(iter(outbox.get, None), timeout=120)
            assert next(stream).joined.member_id
            first = next(stream).deliveries.deliveries[0]
            assert first.attempt == 1
            # The disk fills up while the member works on it.
            fill(mount / "filler", 4 * 1024 * 1024)
            n = 0
            while produce(server, "filler", b"f" * 256 * 1024) is grpc.StatusCode.OK:
                n += 1
                assert n < 100, "the disk does not fill up"
            # Its last attempt: the retry nack parks it; the write fails.
            nack = pb.SubscribeNack(
                positions=[first.record.position], action=pb.NACK_ACTION_RETRY, reason="full"
            )
            outbox.put(pb.SubscribeRequest(nack=nack))
            wait_until(
                lambda: "settling 1 records failed" in server.stderr(),
                timeout=CALL,
                what="the failed park write in the server's log",
            )
            (mount / "filler").unlink()

            def parked() -> list[pb.Record]:
                got = []
                for response in server.stub.Consume(
                    pb.ConsumeRequest(space="$parked", segment=f"{SPACE}/{GROUP}"), timeout=CALL
                ):
                    got.extend(response.records)
                return got

            # It is parked once space is back (the member still joined), and
            # never delivered again meanwhile (finding F4: it was). The filler's
            # own records, of the same space, are delivered too: not counted.
            again: list[pb.Delivery] = []
            drain = threading.Thread(
                target=lambda: again.extend(
                    d
                    for r in stream
                    for d in r.deliveries.deliveries
                    if d.record.position == first.record.position
                )
            )
            drain.start()

            def settled() -> bool:
                info = server.stub.GetGroup(
                    pb.GetGroupRequest(space=SPACE, group=GROUP), timeout=CALL
                ).info
                return info.parked == 1 or bool(again)

            wait_until(settled, timeout=CALL, what="the record parked once space is back")
            outbox.put(None)  # half-close: the stream ends
            drain.join(CALL)
            assert not again, "delivered again after max_attempts (1): " + str(
                [(d.record.position, d.attempt) for d in again]
            )
            # Parked once. (The filler records the member held, at their last
            # attempt too, are parked when it leaves.)
            position = str(first.record.position)
            [record] = [r for r in parked() if r.metadata[PARKED + "position"] == position]
            assert record.metadata[PARKED + "attempts"] == "1"
            assert record.metadata[PARKED + "reason"] == "full"
        finally:
            server.close()
