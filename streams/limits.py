"""Every limit the server enforces, named, with the contract's defaults.

Each field is also a server option (``--max-payload-bytes`` and
``STREAMS_MAX_PAYLOAD_BYTES``, ...); see :mod:`streams.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

KIB = 1024
MIB = 1024 * KIB

# Fixed by the contract, not options: clients rely on them.
MAX_NAME_BYTES = 255
MAX_TRANSACTION_ID_BYTES = 128
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# The longest retention max_age: a signed 64-bit count of nanoseconds (about
# 292 years), which every backend can store.
MAX_AGE_NS = 2**63 - 1
# The widest count a retention policy takes: the wire's uint64.
MAX_UINT64 = 2**64 - 1
# The default gRPC client refuses messages over 4 MiB; responses stay under.
RESPONSE_BYTES_CAP = 4 * MIB - 16 * KIB
# A buffered response is charged twice its size (gRPC keeps its own copy until
# sent), and one response of the largest size must always fit.
MIN_MEMORY_BUDGET_BYTES = 2 * RESPONSE_BYTES_CAP


def process_share(budget: int, workers: int) -> int:
    """Each process's part of a memory budget split among the writer and
    ``workers`` fronts (``--workers N``)."""
    return budget // (workers + 1)


def most_workers(budget: int) -> int:
    """The most fronts whose :func:`process_share` of ``budget`` still holds
    :data:`MIN_MEMORY_BUDGET_BYTES` (0 when even one front's would not)."""
    return max(0, budget // MIN_MEMORY_BUDGET_BYTES - 1)


def _limit(default: int, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True, slots=True)
class Limits:
    """The configurable limits; defaults are the contract's."""

    max_payload_bytes: int = _limit(1 * MIB, "Largest record payload, in bytes.")
    max_records_per_produce: int = _limit(10_000, "Most records in one Produce, all writes.")
    max_metadata_pairs: int = _limit(64, "Most metadata pairs on one record.")
    max_metadata_key_bytes: int = _limit(255, "Longest metadata key, in UTF-8 bytes.")
    max_metadata_value_bytes: int = _limit(4 * KIB, "Longest metadata value, in UTF-8 bytes.")
    # Bounds what the limits above bound in parts: a record as stored and served,
    # its space, segment, timestamp, numbers and transaction id included. The
    # default admits the largest record the contract's default limits admit
    # (about 1.27 MiB); a Consume response always has room for one.
    max_record_bytes: int = _limit(
        3 * MIB // 2, "Largest stored record: payload, metadata and the server's fields, in bytes."
    )
    max_request_bytes: int = _limit(
        16 * MIB, "Largest request message; larger is RESOURCE_EXHAUSTED."
    )
    max_batch: int = _limit(10_000, "Largest max_batch a Consume may ask for.")
    default_batch: int = _limit(1_000, "Records per Consume response when max_batch is 0.")
    # It also bounds what a follower that stops reading holds in the server:
    # about one response, parked in gRPC's flow-controlled send buffer.
    max_response_bytes: int = _limit(
        1 * MIB, "Consume responses are cut at this size (one record always fits)."
    )
    # What the server buffers for clients (tail windows, responses gRPC has not
    # taken yet) stays within this; see streams/memory.py.
    memory_budget_bytes: int = _limit(
        256 * MIB,
        "Memory for live-tail windows and buffered Consume responses, all streams together.",
    )
    max_concurrent_streams: int = _limit(
        2_000, "Most Consume streams open at once; more are RESOURCE_EXHAUSTED."
    )
    # gRPC core reads each request whole (up to max_request_bytes) before the
    # server sees it; these two bound how many it can be reading at once.
    max_connections: int = _limit(
        2_000,
        "Most client connections at once (gRPC's grpc.max_allowed_incoming_connections); "
        "more are closed as they come.",
    )
    max_streams_per_connection: int = _limit(
        2_200,
        "Most calls in flight on one connection (HTTP/2 MAX_CONCURRENT_STREAMS, "
        "grpc.max_concurrent_streams); a client queues the ones beyond it.",
    )
    # A segment_prefix read that finds nothing for a long stretch still gives
    # the event loop back after this much, and goes on at its next turn.
    max_filter_skip_bytes: int = _limit(
        4 * MIB,
        "Most bytes of other segments' records one step of a segment_prefix read skips "
        "before other calls run (the read then goes on).",
    )
    # A WatchSegments call that falls behind remembers which segments changed,
    # up to this much; past it, it re-reads every segment of the space.
    max_watch_change_bytes: int = _limit(
        16 * KIB,
        "Most bytes of changed segment names one WatchSegments call remembers before it "
        "re-reads every segment of the space instead.",
    )
    max_group_members: int = _limit(
        1_000, "Most live members of one consumer group; more joins are RESOURCE_EXHAUSTED."
    )
    max_groups_per_space: int = _limit(
        1_000, "Most consumer groups of one space; more creates are RESOURCE_EXHAUSTED."
    )
    # What a group with live members holds in memory: records read and not
    # settled yet (waiting, delivered, being acked). The group reads on only
    # while it holds less than both.
    max_group_unsettled_records: int = _limit(
        10_000,
        "Most records one consumer group holds read and not yet settled; its reading pauses at it.",
    )
    max_group_unsettled_bytes: int = _limit(
        64 * MIB,
        "Most bytes of records one consumer group holds read and not yet settled; its "
        "reading pauses at it (one record always fits).",
    )
    # Bounds the durable settled positions above acked_through (and what a
    # join loads): how far one stuck record lets the rest of the group run on.
    max_group_lead: int = _limit(
        1_000_000,
        "Most positions a consumer group reads past its acked_through (its oldest unsettled "
        "record); its reading pauses at it.",
    )
    # Bounds the work one ack or nack makes (each position is looked up); not
    # max_in_flight: a member may rightly name records it no longer holds
    # (timed out, moved, acked twice), which are ignored.
    max_group_settle_positions: int = _limit(
        20_000,
        "Most positions in one ack or nack of a consumer group member; more is INVALID_ARGUMENT.",
    )
    max_inflight_request_bytes: int = _limit(
        32 * MIB,
        "Most request bytes being handled at once, all calls together; "
        "more are RESOURCE_EXHAUSTED.",
    )

    def __post_init__(self) -> None:
        for limit in fields(self):
            value = getattr(self, limit.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{limit.name} must be a positive integer, got {value!r}")
        if self.default_batch > self.max_batch:
            raise ValueError(
                f"default_batch ({self.default_batch}) is over max_batch ({self.max_batch})"
            )
        if self.max_response_bytes > RESPONSE_BYTES_CAP:
            raise ValueError(
                f"max_response_bytes ({self.max_response_bytes}) is over the "
                f"{RESPONSE_BYTES_CAP}-byte cap (clients refuse messages over 4 MiB)"
            )
        if self.memory_budget_bytes < MIN_MEMORY_BUDGET_BYTES:
            raise ValueError(
                f"memory_budget_bytes ({self.memory_budget_bytes}) is under "
                f"{MIN_MEMORY_BUDGET_BYTES}: it must hold the largest response twice over"
            )
        if self.max_streams_per_connection < 2:
            raise ValueError(
                f"max_streams_per_connection ({self.max_streams_per_connection}) must be at "
                "least 2: a follower and a Produce on one connection"
            )
        if self.max_inflight_request_bytes < self.max_request_bytes:
            raise ValueError(
                f"max_inflight_request_bytes ({self.max_inflight_request_bytes}) is under "
                f"max_request_bytes ({self.max_request_bytes}): a largest request could never run"
            )
        for part in ("max_payload_bytes", "max_metadata_key_bytes", "max_metadata_value_bytes"):
            if getattr(self, part) > self.max_record_bytes:
                raise ValueError(
                    f"{part} ({getattr(self, part)}) is over max_record_bytes "
                    f"({self.max_record_bytes}): no stored record could reach it"
                )
        if self.max_record_bytes > RESPONSE_BYTES_CAP:
            raise ValueError(
                f"max_record_bytes ({self.max_record_bytes}) is over the {RESPONSE_BYTES_CAP}-byte "
                "response cap (a record must fit one Consume response)"
            )
