"""The errors of Streams, one type per gRPC status the contract names.

The server raises them from validation and storage and turns each into its
status; the client turns statuses back into them, so both sides catch the same
types::

    try:
        client.produce("orders", "eu", [b"x"], expected_sequence=0)
    except SequenceMismatch as exc:
        print("segment already has", exc.actual)
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

# Trailing metadata that carries a mismatch's values, so clients need not parse
# messages. Segment names are UTF-8, hence a binary ("-bin") key.
SEGMENT_TRAILER = "streams-segment-bin"
ACTUAL_TRAILER = "streams-actual"

Trailers = tuple[tuple[str, str | bytes], ...]


class StreamsError(Exception):
    """Base of every Streams error; ``code`` is the gRPC status it travels as."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def trailers(self) -> Trailers:
        """Trailing metadata sent with the status (values clients read as fields)."""
        return ()


class InvalidArgument(StreamsError):
    """A field of the request is malformed or over a limit; nothing was written."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(StreamsError):
    """A compare-and-set check failed; nothing was written."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class SequenceMismatch(FailedPrecondition):
    """``expected_sequence`` did not match the segment's last sequence."""

    def __init__(self, message: str, segment: str = "", actual: int = 0) -> None:
        super().__init__(message)
        self.segment = segment
        self.actual = actual

    def trailers(self) -> Trailers:
        return ((SEGMENT_TRAILER, self.segment.encode("utf-8")), (ACTUAL_TRAILER, str(self.actual)))

    @classmethod
    def from_trailers(cls, message: str, trailers: Mapping[str, str | bytes]) -> SequenceMismatch:
        segment = trailers.get(SEGMENT_TRAILER, b"")
        text = segment.decode("utf-8") if isinstance(segment, bytes) else segment
        return cls(message, segment=text, actual=int(trailers.get(ACTUAL_TRAILER, 0)))


class OffsetMismatch(FailedPrecondition):
    """``expected_offset`` did not match the stored offset."""

    def __init__(self, message: str, actual: int | None = None) -> None:
        super().__init__(message)
        self.actual = actual

    def trailers(self) -> Trailers:
        # Empty: no offset stored.
        return ((ACTUAL_TRAILER, "" if self.actual is None else str(self.actual)),)

    @classmethod
    def from_trailers(cls, message: str, trailers: Mapping[str, str | bytes]) -> OffsetMismatch:
        actual = trailers.get(ACTUAL_TRAILER, "")
        return cls(message, actual=int(actual) if actual else None)


class AlreadyExists(StreamsError):
    """A ``transaction_id`` was reused with different writes."""

    code = grpc.StatusCode.ALREADY_EXISTS


class NotFound(StreamsError):
    """Nothing there: Peek on an empty target, GetOffset never committed."""

    code = grpc.StatusCode.NOT_FOUND


class OutOfRange(StreamsError):
    """A committed offset lies past the target's last offset."""

    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(StreamsError):
    """The request is larger than the server accepts, or the disk is full."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(StreamsError):
    """The server is shutting down or has stopped accepting writes; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(StreamsError):
    """Stored data is damaged (a checksum failed) or missing: what was asked for
    cannot be served, and nothing short of it is. The message names the target
    or the file; the operator restores it (see docs/guarantees.md)."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(StreamsError):
    """No bearer token, or one the server does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(StreamsError):
    """The token does not allow this action on this space."""

    code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(StreamsError):
    """The call's deadline passed before the server answered (it may still have
    acted: retry a Produce with the same transaction_id)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(StreamsError):
    """The call was cancelled before it finished."""

    code = grpc.StatusCode.CANCELLED


class InvariantViolation(RuntimeError):
    """A state the code rules out was reached: a bug, never the client's fault.
    Not a :class:`StreamsError`: the server logs it with its traceback and
    answers INTERNAL. Raised by checks that always run (``python -O`` strips
    ``assert``)."""
