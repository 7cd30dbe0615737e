"""Transaction results for duplicates (rule 5), kept in the ``<prefix>_dedupe``
KV bucket, and found again in the stream when the gateway that committed a
transaction stopped before it recorded the result.

A batch carries ``Nats-Msg-Id: <space>.<transaction>.<revision>`` on its first
message (the revision of the expired entry it replaces, 0 if none), so that
JetStream refuses a retry within its duplicate window (error 10201) however
many gateways race; the refused gateway answers from the bucket, or, if the
entry never comes, from the stored batch itself: the stream keeps the id, the
batch id and the fingerprint in the messages' headers.
"""

from __future__ import annotations

import datetime
from typing import Any

from streams.model import ProduceResult, SegmentAck
from streams.storage.jetstream import records
from streams.storage.jetstream.api import JetStream, Message
from streams.storage.jetstream.names import Names

MSG_ID = "Nats-Msg-Id"
BATCH_ID = "Nats-Batch-Id"
FINGERPRINT = "Streams-Fingerprint"
# Messages read per step when looking for a transaction in the stream.
SCAN_BATCH = 500


def entry(fingerprint: bytes, expires_ns: int, result: ProduceResult) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint.hex(),
        "expires": expires_ns,
        "result": {
            "acks": [[a.segment, a.first_sequence, a.last_sequence] for a in result.acks],
            "first": result.first_position,
            "last": result.last_position,
            "ts": result.timestamp_ns,
        },
    }


def result(found: dict[str, Any]) -> ProduceResult:
    """The stored result, as a duplicate's answer."""
    r = found["result"]
    acks = tuple(SegmentAck(s, first, last) for s, first, last in r["acks"])
    return ProduceResult(acks, r["first"], r["last"], r["ts"], duplicate=True)


def _from_batch(names: Names, batch: list[Message]) -> tuple[bytes, ProduceResult]:
    """A committed batch's fingerprint and result (a write per run of one segment)."""
    acks: list[SegmentAck] = []
    for message in batch:
        stored = records.numbers(names, message)
        if acks and acks[-1].segment == stored.segment:
            acks[-1] = SegmentAck(stored.segment, acks[-1].first_sequence, stored.sequence)
        else:
            acks.append(SegmentAck(stored.segment, stored.sequence, stored.sequence))
    ts = records.numbers(names, batch[0]).timestamp_ns
    fingerprint = bytes.fromhex(batch[0].headers.get(FINGERPRINT, ""))
    return fingerprint, ProduceResult(tuple(acks), batch[0].seq, batch[-1].seq, ts)


async def recover(
    js: JetStream, names: Names, space: str, msg_id: str, window_s: float
) -> tuple[bytes, ProduceResult] | None:
    """The fingerprint and result of the batch stored with ``msg_id`` within
    the last ``window_s`` seconds (JetStream's time), read from the stream
    (through the leader for the start, then batches); None if there is none."""
    stream = names.stream(space)
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=window_s)
    start = await js.get(stream, start_time=since.isoformat().replace("+00:00", "Z"))
    if start is None:
        return None
    subjects = names.space_subjects(space)
    position = start.seq
    found: list[Message] = []
    while True:
        batch = await js.direct_batch(stream, position, SCAN_BATCH, 8 << 20, subjects)
        if not batch:
            leader = await js.get(stream, seq=position, next_by_subj=subjects)
            if leader is None:
                return _from_batch(names, found) if found else None
            batch = [leader]
        for message in batch:
            if found:
                batch_id = found[0].headers.get(BATCH_ID)
                if batch_id is None or message.headers.get(BATCH_ID) != batch_id:
                    return _from_batch(names, found)
                found.append(message)
            elif message.headers.get(MSG_ID) == msg_id:
                found.append(message)
        position = batch[-1].seq + 1
