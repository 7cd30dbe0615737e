"""What the sync and asyncio clients share: types, request building, response
conversion, error mapping, retry and resume bookkeeping.

Nothing in here does I/O; :mod:`streams.client._sync` and
:mod:`streams.client._aio` only add the calls (blocking or awaited) around it.
"""

from __future__ import annotations

import collections
import enum
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from streams import status
from streams.errors import (
    Cancelled,
    DeadlineExceeded,
    NotFound,
    ResourceExhausted,
    StreamsError,
    Unavailable,
)
from streams.model import Ordering, SegmentAck
from streams.status import StatusError
from streams.v1 import streams_pb2 as pb

DEFAULT_TARGET = "127.0.0.1:50051"
# Consume's initial metadata: the first offset (decimal) the stream will deliver.
START_HEADER = "streams-start"


class TransportError(StatusError):
    """INTERNAL that gRPC made up on this side because the connection or the
    answer broke (a reset stream, an HTTP/2 protocol error, a response that does
    not parse): the server may or may not have acted. An INTERNAL the server
    itself sent stays a plain :class:`~streams.status.StatusError` (code INTERNAL)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.INTERNAL)


# gRPC does not mark which side made a status. These are the messages its core and
# its Python layer give the INTERNAL statuses they make for a broken transport; the
# Streams server's own INTERNAL says "internal error; the server log has details".
# An unknown message counts as the server's: not retried, so the error surfaces.
UNPARSED_ANSWER = "Exception deserializing response!"  # grpc's words
_TRANSPORT_INTERNAL = re.compile(
    rf"Received RST_STREAM|Stream removed|{re.escape(UNPARSED_ANSWER)}"
    r"|Failed parsing HTTP/2|Received unexpected EOS|Received http2 header with status"
)


def error_from_rpc(exc: grpc.RpcError) -> StreamsError:
    """The specific :class:`StreamsError` for a failed gRPC call (see
    :func:`error_from_status`)."""
    call: Any = exc
    code = call.code() if callable(getattr(call, "code", None)) else grpc.StatusCode.UNKNOWN
    details = call.details() if callable(getattr(call, "details", None)) else str(exc)
    trailers = (
        call.trailing_metadata() if callable(getattr(call, "trailing_metadata", None)) else ()
    )
    return error_from_status(code, details, trailers)


def error_from_status(
    code: grpc.StatusCode, details: str | None, trailers: Iterable[tuple[str, Any]] | None = ()
) -> StreamsError:
    """:func:`streams.status.error_from_status`, except that an INTERNAL which
    gRPC made up for a broken transport becomes :class:`TransportError`."""
    message = details or code.name
    if code is grpc.StatusCode.INTERNAL and _TRANSPORT_INTERNAL.match(message):
        return TransportError(f"{code.name}: {message}")
    return status.error_from_status(code, details, trailers)


# -- values -----------------------------------------------------------------------------------


def _utc(ts: Timestamp) -> datetime:
    return datetime.fromtimestamp(ts.seconds, UTC).replace(microsecond=ts.nanos // 1000)


def _ns(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record to produce: a payload (``str`` is sent as UTF-8) and string metadata.

    Example::

        client.produce("orders", "eu", [NewRecord(b'{"id": 1}', {"type": "created"})])
    """

    payload: bytes | str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Record:
    """A stored record, as ``consume``, ``follow`` and ``peek`` return it.

    ``sequence`` is its place in its segment, ``position`` its place in its space;
    ``offset_in(segment_target)`` picks the one a target counts in.
    """

    space: str
    segment: str
    sequence: int
    position: int
    timestamp: datetime
    timestamp_ns: int
    payload: bytes
    metadata: Mapping[str, str]
    transaction_id: str

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8 (raises UnicodeDecodeError when it is not)."""
        return self.payload.decode("utf-8")

    def offset_in(self, segment: str) -> int:
        """The record's offset when reading ``segment`` ("" = the whole space)."""
        return self.sequence if segment else self.position


RecordLike = bytes | bytearray | memoryview | str | NewRecord | Record
"""What ``produce`` accepts per record: a payload, a :class:`NewRecord`, or a
:class:`Record` read elsewhere (its payload and metadata are copied)."""


@dataclass(frozen=True, slots=True)
class ProduceResult:
    """The answer to a produce: one ack per segment written, in request order.

    ``duplicate`` is true when the transaction id had already been committed (a
    retry): nothing was written and the numbers are the original ones.
    ``transaction_id`` is the id sent, generated when the caller gave none.
    """

    acks: tuple[SegmentAck, ...]
    first_position: int
    last_position: int
    timestamp: datetime
    duplicate: bool
    transaction_id: str


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """When the server's background retention pass removes a space's oldest records.

    Each limit is None for no limit of that kind: ``max_age`` (records older
    than this go), ``max_records_per_segment`` (each segment keeps at most its
    newest N), ``max_bytes`` (after each pass the space's ``bytes`` are at most
    this; whole records go, oldest position first). ``RetentionPolicy()`` keeps
    everything forever, whatever the server's default policy says.

    Example::

        RetentionPolicy(max_age=timedelta(days=7), max_bytes=10 * 2**30)
    """

    max_age: timedelta | None = None
    max_records_per_segment: int | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_age is not None:
            if not isinstance(self.max_age, timedelta):
                raise TypeError(f"max_age: expected a timedelta or None, got {self.max_age!r}")
            if self.max_age <= timedelta(0):
                raise ValueError(f"max_age: must be positive (None = forever), "
                                 f"got {self.max_age!r}")  # fmt: skip
        for name in ("max_records_per_segment", "max_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: must be a positive int (None = no limit), "
                                 f"got {value!r}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class SpaceConfig:
    """A space's stored configuration; ``configure_space`` replaces it whole.

    ``retention`` None: the server's default policy (its ``--retention-*``
    options) applies to the space.

    Example::

        client.configure_space("orders", SpaceConfig(RetentionPolicy(max_age=timedelta(days=7))))
    """

    retention: RetentionPolicy | None = None


@dataclass(frozen=True, slots=True)
class SpaceInfo:
    """A space's numbers, as ``list_spaces`` and ``get_space`` return them.

    ``first_position`` is the first retained position (``last_position + 1``
    when no record is retained: all were trimmed, or none written);
    ``record_count`` the retained records; ``bytes`` their payload plus
    metadata; ``config`` as ``configure_space`` last stored it (None: never
    configured, the server's default retention applies).
    """

    name: str
    last_position: int
    last_timestamp: datetime
    first_position: int
    record_count: int
    bytes: int
    config: SpaceConfig | None


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A segment's numbers, as ``list_segments``, ``get_segment`` and
    ``watch_segments`` return them.

    ``first_sequence`` is the first retained sequence (``last_sequence + 1``
    when no record is retained); retained records are dense from it to
    ``last_sequence``; ``record_count`` and ``bytes`` count them.
    """

    name: str
    last_sequence: int
    last_position: int
    last_timestamp: datetime
    first_sequence: int
    record_count: int
    bytes: int


def _record_fields(msg: pb.Record) -> dict[str, Any]:
    return {
        "space": msg.space,
        "segment": msg.segment,
        "sequence": msg.sequence,
        "position": msg.position,
        "timestamp": _utc(msg.timestamp),
        "timestamp_ns": _ns(msg.timestamp),
        "payload": msg.payload,
        "metadata": dict(msg.metadata),
        "transaction_id": msg.transaction_id,
    }


def to_record(msg: pb.Record) -> Record:
    return Record(**_record_fields(msg))


def to_produce_result(msg: pb.ProduceResponse, transaction_id: str) -> ProduceResult:
    return ProduceResult(
        acks=tuple(SegmentAck(a.segment, a.first_sequence, a.last_sequence) for a in msg.acks),
        first_position=msg.first_position,
        last_position=msg.last_position,
        timestamp=_utc(msg.timestamp),
        duplicate=msg.duplicate,
        transaction_id=transaction_id,
    )


def to_retention(msg: pb.RetentionPolicy) -> RetentionPolicy:
    age = msg.max_age.ToTimedelta() if msg.HasField("max_age") else timedelta(0)
    return RetentionPolicy(
        max_age=age if age > timedelta(0) else None,
        max_records_per_segment=msg.max_records_per_segment or None,
        max_bytes=msg.max_bytes or None,
    )


def to_space_config(msg: pb.SpaceConfig) -> SpaceConfig:
    return SpaceConfig(to_retention(msg.retention) if msg.HasField("retention") else None)


def space_config(config: SpaceConfig) -> pb.SpaceConfig:
    """The wire form: a limit of None is 0, a retention of None is left unset."""
    if not isinstance(config, SpaceConfig):
        raise TypeError(f"config: expected a SpaceConfig, got {config!r}")
    msg = pb.SpaceConfig()
    policy = config.retention
    if policy is not None:
        msg.retention.SetInParent()  # RetentionPolicy() (keep forever) is not "unset"
        if policy.max_age is not None:
            msg.retention.max_age.FromTimedelta(policy.max_age)
        msg.retention.max_records_per_segment = policy.max_records_per_segment or 0
        msg.retention.max_bytes = policy.max_bytes or 0
    return msg


def to_space_info(msg: pb.SpaceInfo) -> SpaceInfo:
    return SpaceInfo(
        name=msg.name,
        last_position=msg.last_position,
        last_timestamp=_utc(msg.last_timestamp),
        first_position=msg.first_position,
        record_count=msg.record_count,
        bytes=msg.bytes,
        config=to_space_config(msg.config) if msg.HasField("config") else None,
    )


def to_segment_info(msg: pb.SegmentInfo) -> SegmentInfo:
    return SegmentInfo(
        name=msg.name,
        last_sequence=msg.last_sequence,
        last_position=msg.last_position,
        last_timestamp=_utc(msg.last_timestamp),
        first_sequence=msg.first_sequence,
        record_count=msg.record_count,
        bytes=msg.bytes,
    )


# -- requests ---------------------------------------------------------------------------------


def _add_record(add: Callable[..., pb.RecordInput], item: RecordLike) -> None:
    # Each record is built in place in its write (``records.add``): building a
    # RecordInput and copying it in costs about 4x as much per record.
    if type(item) is bytes:
        add(payload=item)
    elif isinstance(item, NewRecord | Record):
        payload = item.payload.encode() if isinstance(item.payload, str) else item.payload
        metadata = add(payload=payload).metadata
        for key, value in item.metadata.items():  # 2x faster than metadata=dict(...)
            metadata[key] = value
    elif isinstance(item, str):
        add(payload=item.encode())
    elif isinstance(item, bytes | bytearray | memoryview):
        add(payload=bytes(item))
    else:
        raise TypeError(f"records: expected bytes, str, NewRecord or Record, got {type(item)!r}")


def segment_write(
    segment: str, records: RecordLike | Iterable[RecordLike], expected_sequence: int | None
) -> pb.SegmentWrite:
    """One write; a lone payload (bytes or str) counts as a list of one."""
    write = pb.SegmentWrite(segment=segment)
    add = write.records.add
    if isinstance(records, bytes | bytearray | memoryview | str | NewRecord | Record):
        _add_record(add, records)
    else:
        for item in records:
            _add_record(add, item)
    if expected_sequence is not None:
        write.expected_sequence = expected_sequence
    return write


def new_transaction_id() -> str:
    return uuid.uuid4().hex


def produce_request(
    space: str, writes: Sequence[pb.SegmentWrite], transaction_id: str | None
) -> pb.ProduceRequest:
    """A ProduceRequest that always carries a transaction id, so it can be retried."""
    return pb.ProduceRequest(
        space=space, writes=writes, transaction_id=transaction_id or new_transaction_id()
    )


def timestamp(when: datetime | float) -> Timestamp:
    """A Timestamp from an aware datetime (naive = UTC) or epoch seconds."""
    ts = Timestamp()
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ts.FromDatetime(when)
    else:
        ts.FromNanoseconds(round(when * 1_000_000_000))
    return ts


def consume_request(
    space: str,
    segment: str,
    *,
    from_offset: int | None,
    from_time: datetime | float | None,
    from_consumer: str | None,
    from_end: bool,
    to_offset: int,
    limit: int,
    max_batch: int,
    follow: bool,
) -> pb.ConsumeRequest:
    starts = [from_offset is not None, from_time is not None, from_consumer is not None, from_end]
    if sum(starts) > 1:
        raise ValueError("give at most one of from_offset, from_time, from_consumer, from_end")
    request = pb.ConsumeRequest(
        space=space, segment=segment, to_offset=to_offset, limit=limit, max_batch=max_batch,
        follow=follow,
    )  # fmt: skip
    if from_offset is not None:
        request.from_offset = from_offset
    elif from_time is not None:
        request.from_timestamp.CopyFrom(timestamp(from_time))
    elif from_consumer is not None:
        request.from_consumer = from_consumer
    elif from_end:
        request.from_end = True
    return request


def commit_request(
    consumer: str, space: str, segment: str, offset: int, expected_offset: int | None
) -> pb.CommitRequest:
    request = pb.CommitRequest(consumer=consumer, space=space, segment=segment, offset=offset)
    if expected_offset is not None:
        request.expected_offset = expected_offset
    return request


def trim_request(
    space: str, segment: str, before_offset: int | None, before_time: datetime | float | None
) -> pb.TrimRequest:
    request = pb.TrimRequest(space=space, segment=segment)
    if before_offset is not None and before_time is None:
        request.before_offset = before_offset
    elif before_time is not None and before_offset is None:
        request.before_timestamp.CopyFrom(timestamp(before_time))
    else:
        raise ValueError("give exactly one of before_offset, before_time")
    return request


def delete_segment_request(
    space: str, segment: str, expected_sequence: int | None
) -> pb.DeleteSegmentRequest:
    request = pb.DeleteSegmentRequest(space=space, segment=segment)
    if expected_sequence is not None:
        request.expected_sequence = expected_sequence
    return request


# -- connection -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How calls are retried, and follow streams reconnected, while the server is
    unreachable or a call's outcome is unknown.

    A call keeps trying for ``max_elapsed`` seconds of failures in a row (default
    300: a server restart, a sidecar that starts late, an app that starts before
    Streams), and at most ``attempts`` times counting the first try (None = no
    limit but time). The waits grow from ``initial_backoff`` by ``multiplier`` up
    to ``max_backoff``, each shortened by up to ``jitter`` of itself at random.
    When either limit is reached the last error is raised. Each retry logs one
    WARNING on logger ``streams.client``: the call, the error, the attempt and
    the wait before the next.

    Retried, because repeating them is safe: ``produce`` and transactions (they
    always carry a transaction id, so a repeat that follows a write is answered
    as a duplicate), every read, and ``commit`` without ``expected_offset``; after
    any status that leaves the outcome unknown: UNAVAILABLE, DEADLINE_EXCEEDED
    (each attempt's own deadline), CANCELLED that the caller did not ask for
    (closing the client asks), UNKNOWN, and INTERNAL made by gRPC on this side
    for a broken transport (an INTERNAL the server sends is not retried: it says
    something repeating cannot mend). Follow and consume streams reconnect on the
    same statuses but DEADLINE_EXCEEDED (the stream's own timeout), from the
    record after the last one they delivered, or before any record from the start
    the server fixed (``streams-start``); the clock and the count start again
    each time a stream reconnects or a record arrives. A group subscription
    joins again on those statuses and on RESOURCE_EXHAUSTED too (a server
    momentarily full: request bytes in flight, memory, streams, members of the
    group); its clock and count start again at each join.

    Example::

        Client("streams:50051")                                  # 5 minutes, waits up to 2 s
        Client("streams:50051", retry=RetryPolicy(max_elapsed=10.0))
        Client("streams:50051", retry=RetryPolicy(max_elapsed=None))   # forever
        Client("streams:50051", retry=RetryPolicy(attempts=1))   # never retry
    """

    attempts: int | None = None
    max_elapsed: float | None = 300.0
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts: must be at least 1 or None, got {self.attempts}")
        if self.max_elapsed is not None and self.max_elapsed < 0:
            raise ValueError(f"max_elapsed: must be >= 0 or None, got {self.max_elapsed}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter: must be between 0 and 1, got {self.jitter}")

    def backoffs(self) -> Iterator[float]:
        """The waits before the 2nd, 3rd, ... attempts (``max_elapsed`` aside)."""
        wait = self.initial_backoff
        tries = 1
        while self.attempts is None or tries < self.attempts:
            yield wait * (1 - self.jitter * random.random())
            wait = min(wait * self.multiplier, self.max_backoff)
            tries += 1


_log = logging.getLogger("streams.client")


def outcome_unknown(error: StreamsError) -> bool:
    """True when the failed call may or may not have taken effect, so that a call
    safe to repeat is worth repeating (see :class:`RetryPolicy`)."""
    return isinstance(error, Unavailable | DeadlineExceeded | Cancelled | TransportError) or (
        status.code_of(error) is grpc.StatusCode.UNKNOWN
    )


def _stream_broke(error: StreamsError) -> bool:
    # A stream's DEADLINE_EXCEEDED is its own timeout, asked for by the caller.
    return outcome_unknown(error) and not isinstance(error, DeadlineExceeded)


def _rejoin_worthy(error: StreamsError) -> bool:
    # A Subscribe's RESOURCE_EXHAUSTED is a server momentarily full (request bytes
    # in flight, memory, streams, members of the group), never a message of this
    # client too big to ever pass: its lists and reasons are bounded (see Link).
    return _stream_broke(error) or isinstance(error, ResourceExhausted)


def status_text(error: StreamsError) -> str:
    """The error with its status name in front, once."""
    text = str(error)
    name = status.code_of(error).name
    return text if text.startswith(f"{name}:") else f"{name}: {text}"


def _never(error: StreamsError) -> bool:
    return False


def describe(request: Any) -> str:
    """What a call is, for log lines: its method and target."""
    method = type(request).__name__.removesuffix("Request")
    space = getattr(request, "space", "")
    segment = getattr(request, "segment", "")
    where = f" {space}/{segment}" if segment else f" {space}" if space else ""
    return f"{method}{where}{' (follow)' if getattr(request, 'follow', False) else ''}"


class Retrier:
    """One call's retry state: ``delay(error)`` is the wait before trying again, or
    None when the error is not retried or the policy's limits are reached."""

    def __init__(
        self, policy: RetryPolicy, retryable: Callable[[StreamsError], bool], what: str
    ) -> None:
        self._policy = policy
        self._retryable = retryable
        self._what = what
        self._waits = policy.backoffs()
        self._failures = 0
        self._since: float | None = None  # when the failures in a row began

    @classmethod
    def unary(cls, policy: RetryPolicy, request: Any, safe: bool = True) -> Retrier:
        return cls(policy, outcome_unknown if safe else _never, describe(request))

    @classmethod
    def stream(cls, policy: RetryPolicy, request: Any) -> Retrier:
        return cls(policy, _stream_broke, describe(request))

    def delay(self, error: StreamsError) -> float | None:
        if not self._retryable(error):
            return None
        now = time.monotonic()
        if self._since is None:
            self._since = now
        self._failures += 1
        wait = next(self._waits, None)
        budget = self._policy.max_elapsed
        if wait is not None and budget is not None:
            left = budget - (now - self._since)
            wait = min(wait, left) if left > 0 else None
        if wait is None:
            return None
        _log.warning(
            "%s: %s; attempt %d failed, retrying in %.2f s",
            self._what, status_text(error), self._failures, wait,
        )  # fmt: skip
        return wait

    def progressed(self) -> None:
        """The call got somewhere: start counting attempts and time again."""
        self._waits = self._policy.backoffs()
        self._failures = 0
        self._since = None


@dataclass(frozen=True, slots=True)
class Connection:
    """Everything both clients need to open a channel and make calls.

    Built by the clients from their keyword arguments (see :class:`streams.Client`).
    """

    target: str = DEFAULT_TARGET
    tls: bool = False
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    token: str | None = None
    timeout: float | None = 30.0
    retry: RetryPolicy = RetryPolicy()
    keepalive_time: float | None = None
    keepalive_timeout: float | None = None
    channel_options: tuple[tuple[str, Any], ...] = ()

    @property
    def secure(self) -> bool:
        return self.tls or any(
            x is not None for x in (self.root_certificates, self.private_key,
                                    self.certificate_chain)
        )  # fmt: skip

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.secure:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def options(self) -> list[tuple[str, Any]]:
        opts: list[tuple[str, Any]] = [
            # Reconnect quickly after a server restart; calls retry on their own backoff.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if self.keepalive_time is not None:
            opts.append(("grpc.keepalive_time_ms", int(self.keepalive_time * 1000)))
        if self.keepalive_timeout is not None:
            opts.append(("grpc.keepalive_timeout_ms", int(self.keepalive_timeout * 1000)))
        return [*opts, *self.channel_options]

    def channel(self, api: Any) -> Any:
        """A channel to the target through ``api``: ``grpc`` or ``grpc.aio``."""
        credentials = self.credentials()
        if credentials is not None:
            return api.secure_channel(self.target, credentials, self.options())
        return api.insecure_channel(self.target, self.options())

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def deadline(self, timeout: float | None, default: bool = True) -> float | None:
        """The timeout of one attempt: the call's own, else the client's (for unary calls)."""
        if timeout is not None:
            return timeout
        return self.timeout if default else None


# -- reading ----------------------------------------------------------------------------------


class ReadCursor:
    """Where a consume or follow stream stands, so it can reconnect without a gap.

    After a record, a reconnect asks for the next offset of the same target, with
    ``limit`` reduced by what was delivered. Before any record it asks for the
    start the server announced in ``streams-start`` (so ``from_end`` and
    ``from_time`` lose nothing), or repeats the original request when the server
    sent none.
    """

    def __init__(self, request: pb.ConsumeRequest, policy: RetryPolicy) -> None:
        self._request = request
        self._delivered = 0
        self._next: int | None = None
        self.retrier = Retrier.stream(policy, request)

    def connected(self, metadata: Iterable[tuple[str, Any]] | None, failed: bool) -> None:
        """Takes a call's initial metadata; ``failed`` when the call had already
        ended in an error (then the metadata may be empty: the server never answered).

        Headers that came mean the server took the request: the retry clock
        starts again, and before any record ``streams-start`` is where to resume,
        even when the call broke since.
        """
        start = None
        for key, value in metadata or ():
            if key != START_HEADER:
                continue
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            if text.isascii() and text.isdigit():
                start = int(text)
            else:
                _log.warning("%s: ignoring %s=%r: not a decimal offset",
                             describe(self._request), START_HEADER, text)  # fmt: skip
        if start is not None and self._next is None:
            self._next = start
        if start is not None or not failed:
            self.retrier.progressed()

    def records(self, response: pb.ConsumeResponse) -> Iterator[Record]:
        segment = self._request.segment
        for msg in response.records:
            record = to_record(msg)
            self._next = record.offset_in(segment) + 1
            self._delivered += 1
            yield record
        self.retrier.progressed()

    def request(self) -> pb.ConsumeRequest:
        """The request for the next (re)connection."""
        if self._next is None:
            return self._request
        resume = pb.ConsumeRequest()
        resume.CopyFrom(self._request)
        resume.from_offset = self._next  # replaces whichever start the oneof had
        if resume.limit:
            resume.limit = max(resume.limit - self._delivered, 0)
        return resume

    @property
    def done(self) -> bool:
        """The request's limit or to_offset is already met: nothing to reconnect for."""
        r = self._request
        if r.limit and self._delivered >= r.limit:
            return True
        return bool(r.to_offset and self._next is not None and self._next > r.to_offset)


# -- watching segments -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotSegments:
    """Part of the initial snapshot: segments as they are when the watch starts
    (in name order, in as many events as the server needs)."""

    segments: tuple[SegmentInfo, ...]


@dataclass(frozen=True, slots=True)
class SnapshotComplete:
    """Every matching segment has been reported once; live changes follow."""


@dataclass(frozen=True, slots=True)
class SegmentsUpdated:
    """The latest info of segments written, trimmed, or created since (coalesced:
    a watcher that falls behind gets the latest info per segment, not every step)."""

    segments: tuple[SegmentInfo, ...]


@dataclass(frozen=True, slots=True)
class SegmentsDeleted:
    """Names of segments deleted since (they left ``list_segments``)."""

    names: tuple[str, ...]


SegmentEvent = SnapshotSegments | SnapshotComplete | SegmentsUpdated | SegmentsDeleted
"""What ``watch_segments`` yields; match on the type::

    match event:
        case SnapshotSegments(segments) | SegmentsUpdated(segments): ...
        case SegmentsDeleted(names): ...
        case SnapshotComplete(): ...
"""


class WatchView:
    """A segment watch's view of the space, so that a reconnect resumes it.

    After a reconnect the server sends a whole snapshot again. The view compares
    it with what the caller was told: only segments whose info differs come out
    (as :class:`SnapshotSegments` while the first snapshot is not complete, else
    as :class:`SegmentsUpdated`), and segments the new snapshot lacks come out as
    :class:`SegmentsDeleted` once it is complete. The caller never sees a second
    snapshot, only what changed while the stream was down (coalesced, as live
    changes are). Live changes the view already holds (the same info again, a
    deletion of a name never reported) are dropped.
    """

    def __init__(self, request: pb.WatchSegmentsRequest, policy: RetryPolicy) -> None:
        self.request = request
        self.retrier = Retrier.stream(policy, request)
        self.known: dict[str, SegmentInfo] = {}
        self.complete = False  # the first snapshot was reported whole
        self._seen: set[str] | None = set()  # names of the snapshot being read; None: live

    def reconnecting(self) -> None:
        """The stream broke: the next connection starts with a snapshot again."""
        self._seen = set()

    def events(self, response: pb.WatchSegmentsResponse) -> list[SegmentEvent]:
        self.retrier.progressed()
        if self._seen is not None:
            return self._snapshot(response, self._seen)
        events: list[SegmentEvent] = []
        changed = self._changed(response.segments)
        if changed:
            events.append(SegmentsUpdated(changed))
        gone = tuple(name for name in response.deleted if self.known.pop(name, None) is not None)
        if gone:
            events.append(SegmentsDeleted(gone))
        return events

    def _changed(self, messages: Iterable[pb.SegmentInfo]) -> tuple[SegmentInfo, ...]:
        changed = []
        for msg in messages:
            info = to_segment_info(msg)
            if self.known.get(info.name) != info:
                self.known[info.name] = info
                changed.append(info)
        return tuple(changed)

    def _snapshot(self, response: pb.WatchSegmentsResponse, seen: set[str]) -> list[SegmentEvent]:
        seen.update(msg.name for msg in response.segments)
        events: list[SegmentEvent] = []
        changed = self._changed(response.segments)
        if changed:
            events.append(SegmentsUpdated(changed) if self.complete else SnapshotSegments(changed))
        if response.snapshot_complete:
            self._seen = None
            if not self.complete:
                self.complete = True
                events.append(SnapshotComplete())
            gone = tuple(name for name in self.known if name not in seen)
            for name in gone:
                del self.known[name]
            if gone:
                events.append(SegmentsDeleted(gone))
        return events


# -- consumers --------------------------------------------------------------------------------


class OnError(enum.Enum):
    """What ``Consumer.run`` does when the handler raises on a record.

    ``STOP`` (the default) raises the handler's exception: the record is not
    committed, so the next consumer of that name starts at it again. ``SKIP``
    logs the record and the exception (logger ``streams.client``, ERROR, with the
    traceback) and goes on: the record counts as processed and is committed with
    the next ones. To keep the record somewhere (a dead-letter space, say), give
    ``run`` a callable instead: it gets the record and the exception, and the
    record counts as processed once it returns; if it raises, ``run`` stops as
    under ``STOP``.

    Example::

        consumer.run(bill, on_error=OnError.SKIP)
        consumer.run(bill, on_error=lambda record, exc: client.produce(
            "orders-failed", record.segment, NewRecord(record.payload, {"error": repr(exc)})))
    """

    STOP = "stop"
    SKIP = "skip"


def handler_failed(
    consumer: str,
    on_error: OnError | Callable[[Record, Exception], Any],
    record: Record,
    error: Exception,
) -> Callable[[Record, Exception], Any] | None:
    """Applies ``on_error`` to a record the handler raised on: raises the error
    under STOP, logs it under SKIP, returns the callback to call otherwise."""
    if on_error is OnError.STOP:
        raise error
    if on_error is OnError.SKIP:
        _log.error(
            "consumer %r: skipping the record at %s/%s sequence %d (position %d): "
            "the handler raised %r",
            consumer, record.space, record.segment, record.sequence, record.position, error,
            exc_info=error,
        )  # fmt: skip
        return None
    return on_error


def check_on_error(on_error: object) -> None:
    """Raises TypeError for an ``on_error`` that is neither an OnError nor callable."""
    if not isinstance(on_error, OnError) and not callable(on_error):
        raise TypeError(f"on_error: expected OnError.STOP, OnError.SKIP or a callable, "
                        f"got {on_error!r}")  # fmt: skip


class CommitSchedule:
    """A consumer's bookkeeping: what was handed out, what is processed, when to commit.

    A record counts as processed when the caller asks for the next one, or when the
    consumer is closed without an error in flight.
    """

    def __init__(self, segment: str, every: int, interval: float | None) -> None:
        if every < 1:
            raise ValueError("commit_every: must be at least 1")
        self._segment = segment
        self._every = every
        self._interval = interval
        self._handed: int | None = None  # offset of the record the caller holds
        self.processed: int | None = None
        self.committed: int | None = None
        self.failure: Exception | None = None  # a lasting commit error, for the application
        self._since = 0
        self._last_commit = time.monotonic()

    def hand_out(self, record: Record) -> None:
        self.done_with_current()
        self._handed = record.offset_in(self._segment)

    def done_with_current(self) -> None:
        if self._handed is not None:
            self.processed = self._handed
            self._handed = None
            self._since += 1

    def pending(self) -> int | None:
        """The offset to commit now, if any is not yet committed."""
        if self.processed is None or self.processed == self.committed:
            return None
        return self.processed

    def due(self) -> int | None:
        """The offset to commit because ``every`` records or ``interval`` seconds passed."""
        if self._since >= self._every or (
            self._interval is not None and time.monotonic() - self._last_commit >= self._interval
        ):
            return self.pending()
        return None

    def committed_at(self, offset: int) -> None:
        self.committed = offset
        self._since = 0
        self._last_commit = time.monotonic()

    def failed(self, consumer: str, offset: int, error: Exception) -> bool:
        """Logs a commit that failed; True when it is worth trying again later
        (its outcome is unknown, the server unreachable or slow: the client's
        retries ran out).
        Any other error is kept, and :meth:`raise_failure` gives it to the
        application: retrying cannot mend a denied or invalid commit."""
        if isinstance(error, StreamsError) and outcome_unknown(error):
            _log.warning(
                "consumer %r: commit of offset %d failed, retrying later: %s",
                consumer,
                offset,
                error,
            )
            return True
        _log.error("consumer %r: commit of offset %d failed: %s", consumer, offset, error)
        self.failure = error
        return False

    def raise_failure(self) -> None:
        """Raises the commit error kept by :meth:`failed`, if any."""
        if self.failure is not None:
            raise self.failure

    @property
    def interval(self) -> float | None:
        return self._interval


class TransactionBuilder:
    """The writes of one multi-segment transaction, gathered before it is sent."""

    def __init__(self, space: str, transaction_id: str | None) -> None:
        self.space = space
        self.transaction_id = transaction_id or new_transaction_id()
        self.writes: list[pb.SegmentWrite] = []

    def add(
        self,
        segment: str,
        records: RecordLike | Iterable[RecordLike],
        *,
        expected_sequence: int | None = None,
    ) -> Self:
        """Adds a write to ``segment``; returns the transaction, so calls chain."""
        self.writes.append(segment_write(segment, records, expected_sequence))
        return self

    def request(self) -> pb.ProduceRequest:
        if not self.writes:
            raise ValueError("a transaction needs at least one write: call add() first")
        return produce_request(self.space, self.writes, self.transaction_id)


# -- pipelining --------------------------------------------------------------------------------

# A pipeline's defaults: enough transactions in flight to hide a round trip
# behind the server's work (bench/pipeline.py: 32 is past the knee), and bytes
# such that 8 pipelines stay within a server's default
# --max-inflight-request-bytes (32 MiB for all calls together; past it the
# server answers RESOURCE_EXHAUSTED, which fails the handle).
DEFAULT_PIPELINE_IN_FLIGHT = 32
DEFAULT_PIPELINE_BYTES = 4 * 2**20


class PipelineClosed(RuntimeError):
    """``produce`` on a pipeline that was closed (or cancelled).

    Example::

        pipeline.close()
        try:
            pipeline.produce("orders", "eu", b"late")
        except PipelineClosed:
            ...   # open a new pipeline (client.pipeline()) to send more
    """


@dataclass(slots=True, eq=False)
class InFlight:
    """One transaction of a pipeline, from its send to its handle's resolution.

    ``call`` is what cancels it now (the gRPC call, a retry timer or a task);
    ``outcome`` its result or error once its call ended."""

    handle: Any
    request: pb.ProduceRequest
    size: int
    call: Any = None
    ended: bool = False
    outcome: ProduceResult | BaseException | None = None


class PipelineWindow:
    """The bookkeeping of one pipeline, without I/O or locks (the sync pipeline
    holds a lock around it, the async one runs it on its loop).

    Transactions enter in send order (``add``) while ``fits`` says there is room:
    fewer than ``max_in_flight`` unresolved and their request bytes within
    ``max_bytes`` (one transaction larger than ``max_bytes`` goes alone, so that
    it is never stuck). ``end`` records a call's outcome and returns the
    transactions now resolvable, in send order: a transaction resolves once its
    own call and those of every transaction sent before it ended, so handles
    complete (and room frees) in send order.
    """

    def __init__(self, max_in_flight: int, max_bytes: int) -> None:
        for name, value in (("max_in_flight", max_in_flight), ("max_bytes", max_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        self.max_in_flight = max_in_flight
        self.max_bytes = max_bytes
        self._queue: collections.deque[InFlight] = collections.deque()
        self._bytes = 0
        self._failure: tuple[Any, BaseException] | None = None  # (handle, error)

    @property
    def in_flight(self) -> int:
        """Transactions sent whose handles are not resolved yet."""
        return len(self._queue)

    @property
    def bytes_in_flight(self) -> int:
        return self._bytes

    def fits(self, size: int) -> bool:
        if not self._queue:
            return True
        return len(self._queue) < self.max_in_flight and self._bytes + size <= self.max_bytes

    def add(self, handle: Any, request: pb.ProduceRequest, size: int) -> InFlight:
        entry = InFlight(handle, request, size)
        self._queue.append(entry)
        self._bytes += size
        return entry

    def end(self, entry: InFlight, outcome: ProduceResult | BaseException) -> list[InFlight]:
        if entry.ended:
            return []  # a call cancelled by the pipeline that ended on its own meanwhile
        entry.ended = True
        entry.outcome = outcome
        resolved = []
        while self._queue and self._queue[0].ended:
            done = self._queue.popleft()
            self._bytes -= done.size
            if isinstance(done.outcome, BaseException) and self._failure is None:
                self._failure = (done.handle, done.outcome)
            resolved.append(done)
        return resolved

    def unended(self) -> list[InFlight]:
        return [entry for entry in self._queue if not entry.ended]

    def take_failure(self) -> tuple[Any, BaseException] | None:
        """The handle and error of the first failed transaction (in send order)
        since the last call."""
        failure, self._failure = self._failure, None
        return failure


def pipelined_request(
    space: str,
    segment: str,
    records: RecordLike | Iterable[RecordLike],
    expected_sequence: int | None,
    transaction_id: str | None,
) -> pb.ProduceRequest:
    return produce_request(
        space, [segment_write(segment, records, expected_sequence)], transaction_id
    )


def cancelled_in_pipeline(request: pb.ProduceRequest, by: str = "its pipeline") -> Cancelled:
    return Cancelled(
        f"CANCELLED: Produce {request.space} (transaction {request.transaction_id}) was "
        f"cancelled with {by}; its outcome is unknown: sending it again under the "
        "same transaction id is safe"
    )


def settle(handle: Any, outcome: ProduceResult | BaseException | None) -> None:
    """Resolves a pipeline handle (a concurrent.futures or asyncio future) with
    the outcome of an ended :class:`InFlight`."""
    if isinstance(outcome, BaseException):
        handle.set_exception(outcome)
    else:
        handle.set_result(outcome)


# -- consumer groups --------------------------------------------------------------------------


class GroupNotFound(NotFound):
    """The group is unknown: never created, or deleted (a subscription to a
    deleted group ends with it). ``space`` and ``group`` name it."""

    def __init__(self, message: str, space: str = "", group: str = "") -> None:
        super().__init__(message)
        self.space = space
        self.group = group


def group_error(error: StreamsError, space: str, group: str) -> StreamsError:
    """A group call's error, NOT_FOUND as :class:`GroupNotFound`."""
    if isinstance(error, NotFound) and not isinstance(error, GroupNotFound):
        return GroupNotFound(error.message, space, group)
    return error


_ORDERINGS = {
    Ordering.PER_SEGMENT: pb.ORDERING_PER_SEGMENT,
    Ordering.NONE: pb.ORDERING_NONE,
}


@dataclass(frozen=True, slots=True)
class Group:
    """A consumer group's settings, as the server resolved them: defaults filled in
    (``ack_timeout`` 30 s, ``max_attempts`` 5, dead letters to ``$parked`` /
    ``<space>/<group>``). The start is as created: at most one of ``from_offset``
    (a position), ``from_time`` and ``from_end``; none = the space's first record.
    """

    space: str
    name: str
    ordering: Ordering
    from_offset: int | None
    from_time: datetime | None
    from_end: bool
    ack_timeout: timedelta
    max_attempts: int
    dead_letter_space: str
    dead_letter_segment: str


@dataclass(frozen=True, slots=True)
class GroupMember:
    """A live member of a group: its id (from its join), the ``member_name`` it
    gave, the segments it owns and its records in flight."""

    id: str
    name: str
    segments: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A group and its progress, as ``get_group`` returns it.

    Every position up to ``acked_through`` is acked or parked (or never to be
    delivered: before the start, trimmed, deleted); ``lag`` is how many
    positions of the space lie past it. ``parked`` counts every record the
    group ever parked; ``members`` are the live ones.
    """

    group: Group
    acked_through: int
    last_position: int
    in_flight: int
    parked: int
    members: tuple[GroupMember, ...]

    @property
    def lag(self) -> int:
        return max(self.last_position - self.acked_through, 0)


def _seconds_delta(value: timedelta | float, name: str) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    raise TypeError(f"{name}: expected a timedelta or seconds, got {value!r}")


def group_message(
    space: str,
    name: str,
    *,
    ordering: Ordering,
    from_offset: int | None,
    from_time: datetime | float | None,
    from_end: bool,
    ack_timeout: timedelta | float | None,
    max_attempts: int | None,
    dead_letter_space: str | None,
    dead_letter_segment: str | None,
) -> pb.Group:
    """The wire form of a CreateGroup; None (and 0) leave a setting to the server's default."""
    if not isinstance(ordering, Ordering):
        raise TypeError(f"ordering: expected Ordering.PER_SEGMENT or Ordering.NONE, "
                        f"got {ordering!r}")  # fmt: skip
    if sum([from_offset is not None, from_time is not None, bool(from_end)]) > 1:
        raise ValueError("give at most one of from_offset, from_time, from_end")
    msg = pb.Group(
        space=space, name=name, ordering=_ORDERINGS[ordering], max_attempts=max_attempts or 0,
        dead_letter_space=dead_letter_space or "", dead_letter_segment=dead_letter_segment or "",
    )  # fmt: skip
    if from_offset is not None:
        msg.from_offset = from_offset
    elif from_time is not None:
        msg.from_timestamp.CopyFrom(timestamp(from_time))
    elif from_end:
        msg.from_end = True
    if ack_timeout is not None:
        msg.ack_timeout.FromTimedelta(_seconds_delta(ack_timeout, "ack_timeout"))
    return msg


def to_group(msg: pb.Group) -> Group:
    start = msg.WhichOneof("start")
    return Group(
        space=msg.space,
        name=msg.name,
        ordering=Ordering.NONE if msg.ordering == pb.ORDERING_NONE else Ordering.PER_SEGMENT,
        from_offset=msg.from_offset if start == "from_offset" else None,
        from_time=_utc(msg.from_timestamp) if start == "from_timestamp" else None,
        from_end=start == "from_end",
        ack_timeout=msg.ack_timeout.ToTimedelta(),
        max_attempts=msg.max_attempts,
        dead_letter_space=msg.dead_letter_space,
        dead_letter_segment=msg.dead_letter_segment,
    )


def to_group_info(msg: pb.GetGroupResponse) -> GroupInfo:
    info = msg.info
    return GroupInfo(
        group=to_group(msg.group),
        acked_through=info.acked_through,
        last_position=info.last_position,
        in_flight=info.in_flight,
        parked=info.parked,
        members=tuple(GroupMember(m.id, m.name, m.segments, m.in_flight) for m in info.members),
    )


# Most positions in one ack or nack message: a server refuses a longer list
# (--max-group-settle-positions, 20,000 by default); more go in further messages.
MAX_SETTLE_POSITIONS = 10_000

# A nack's reason is cut to this many UTF-8 bytes: the server's default
# --max-metadata-value-bytes (the reason becomes a parked record's metadata value).
MAX_REASON_BYTES = 4096

_Answer = tuple[pb.NackAction, str] | None  # None: an ack; else a nack's action and reason


class Link:
    """The sending side of one Subscribe stream: the acks and nacks waiting to go.

    ``ack``/``nack`` (thread-safe) queue a position and call ``wake`` when the
    queue was empty; the stream's request writer then ``take``s everything
    queued at once, so acks that pile up while one message is being sent go out
    together in the next one, and none waits for a timer. A position is queued
    once: answered again while its first answer waits (``ack()`` twice, both
    copies of a record delivered again after ``ack_timeout``, an ack and a
    nack), the first answer counts, so no list the server gets repeats a
    position. A list goes in messages of at most :data:`MAX_SETTLE_POSITIONS`.
    ``close`` ends the link: ``flush`` sends what is queued, then the writer
    half-closes (the member leaves); without it (the stream broke) what is
    queued is dropped and later acks are no-ops: the server delivers those
    records again.
    """

    _OPEN, _CLOSING, _DEAD = range(3)

    def __init__(self, wake: Callable[[], object]) -> None:
        self._lock = threading.Lock()
        self._wake = wake
        self._state = self._OPEN
        self._answers: dict[int, _Answer] = {}  # by position, in the order answered

    @property
    def open(self) -> bool:
        return self._state == self._OPEN

    def ack(self, position: int) -> bool:
        return self._queue(position, None)

    def nack(self, position: int, park: bool, reason: str) -> bool:
        action = pb.NACK_ACTION_PARK if park else pb.NACK_ACTION_RETRY
        return self._queue(position, (action, reason))

    def _queue(self, position: int, answer: _Answer) -> bool:
        with self._lock:
            if self._state != self._OPEN:
                return False
            idle = not self._answers
            self._answers.setdefault(position, answer)
        if idle:
            self._wake()
        return True

    def take(self) -> list[pb.SubscribeRequest] | None:
        """The messages to send now (empty: nothing yet); None: the writer is done."""
        with self._lock:
            if self._state == self._DEAD:
                return None
            answers, self._answers = self._answers, {}
            if not answers and self._state == self._CLOSING:
                return None
        by_answer: dict[_Answer, list[int]] = {None: []}  # the acks first
        for position, answer in answers.items():
            by_answer.setdefault(answer, []).append(position)
        requests = []
        for answer, positions in by_answer.items():
            for start in range(0, len(positions), MAX_SETTLE_POSITIONS):
                chunk = positions[start : start + MAX_SETTLE_POSITIONS]
                if answer is None:
                    requests.append(pb.SubscribeRequest(ack=pb.SubscribeAck(positions=chunk)))
                else:
                    action, reason = answer
                    nack = pb.SubscribeNack(positions=chunk, action=action, reason=reason)
                    requests.append(pb.SubscribeRequest(nack=nack))
        return requests

    def close(self, flush: bool) -> None:
        with self._lock:
            if self._state == self._OPEN:
                self._state = self._CLOSING if flush else self._DEAD
            elif not flush:
                self._state = self._DEAD
        self._wake()


@dataclass(frozen=True, slots=True, eq=False)
class Message(Record):
    """A record delivered by a group subscription: the :class:`Record`'s fields,
    ``attempt`` (1 on the first delivery), and :meth:`ack` / :meth:`nack`.

    Settle each message once: ``ack()`` when it is processed, ``nack()`` to
    have it delivered again after a back-off, ``nack(park=True, reason=...)``
    to park it in the group's dead-letter segment. Neither blocks: they queue
    the answer for the subscription's stream, which sends it at once (answers
    that pile up meanwhile go out together; a record answered again before its
    first answer went keeps the first). Both return False, and do
    nothing, when the stream the message came on has ended (the subscription
    re-joined after a disconnect, or was closed): the server delivers such a
    record again. A message never settled is delivered again after the
    group's ``ack_timeout``, or at once when the subscription ends.

    Example::

        for message in subscription:
            try:
                handle(message.payload)
            except Exception as exc:
                message.nack(park=message.attempt >= 3, reason=repr(exc))
            else:
                message.ack()
    """

    attempt: int
    _link: Link = field(repr=False)

    def ack(self) -> bool:
        """The record is processed: settle it (durably, on the server)."""
        return self._link.ack(self.position)

    def nack(self, park: bool = False, reason: str = "") -> bool:
        """Not processed: deliver it again after a back-off (100 ms, doubling, at
        most 5 s) or, ``park=True`` (or at the group's ``max_attempts``), park it
        in the dead-letter segment with ``reason`` in its ``streams-parked-reason``.

        ``reason`` is free text (``repr(exc)``, say): a longer one is cut to its
        first :data:`MAX_REASON_BYTES` (4,096) UTF-8 bytes, at a character
        boundary, so that a long exception text still parks the record."""
        if not isinstance(reason, str):
            raise TypeError(f"reason: expected a str, got {reason!r}")
        return self._link.nack(self.position, park, cut_reason(reason))


def cut_reason(reason: str) -> str:
    """``reason`` cut to :data:`MAX_REASON_BYTES` of UTF-8 at a character boundary
    (what cannot be encoded, a lone surrogate, becomes ``?``)."""
    # A cut inside a character leaves an incomplete sequence at the end only: dropped.
    return reason.encode("utf-8", "replace")[:MAX_REASON_BYTES].decode("utf-8", "ignore")


def default_member_name() -> str:
    """``host/pid``: what operators see of a member that gave no name."""
    return f"{socket.gethostname()}/{os.getpid()}"[:200]


class Membership:
    """What a subscription keeps across its streams: the join, the member id the
    server gave, the retry clock of re-joins, and the conversion of responses."""

    def __init__(
        self, space: str, group: str, member_name: str | None, max_in_flight: int,
        policy: RetryPolicy,
    ) -> None:  # fmt: skip
        if not isinstance(max_in_flight, int) or max_in_flight < 0:
            raise ValueError(f"max_in_flight: expected an int >= 0 (0 = the server's "
                             f"default, 100), got {max_in_flight!r}")  # fmt: skip
        self.space = space
        self.group = group
        name = default_member_name() if member_name is None else member_name
        self.join = pb.SubscribeRequest(join=pb.SubscribeJoin(
            space=space, group=group, member_name=name, max_in_flight=max_in_flight))  # fmt: skip
        self.retrier = Retrier(policy, _rejoin_worthy, f"Subscribe {space}/{group}")
        self.member_id: str | None = None
        self.joins = 0

    def messages(self, response: pb.SubscribeResponse, link: Link) -> list[Message]:
        """The messages of one response (none for ``joined``)."""
        kind = response.WhichOneof("kind")
        if kind == "joined":
            self.member_id = response.joined.member_id
            self.joins += 1
            self.retrier.progressed()
            return []
        if kind != "deliveries":
            return []  # a kind this client does not know: nothing to deliver
        return [
            Message(**_record_fields(d.record), attempt=d.attempt, _link=link)
            for d in response.deliveries.deliveries
        ]

    def error(self, error: StreamsError) -> StreamsError:
        return group_error(error, self.space, self.group)

    def rejoin_delay(self, error: StreamsError) -> float | None:
        """Seconds to wait before joining again after the stream broke with
        ``error``, or None: raise it (the retries ran out, or neither a
        disconnect nor RESOURCE_EXHAUSTED, a server momentarily full)."""
        return self.retrier.delay(error)
