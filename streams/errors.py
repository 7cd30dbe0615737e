"""The errors of Streams, one type per error case the contract names.

Plain exceptions, free of any transport: validation and storage raise them,
:mod:`streams.status` (the one place that knows gRPC) gives each its status
code and trailing metadata in the server, and turns statuses back into them
in the client, so both sides catch the same types::

    try:
        client.produce("orders", "eu", [b"x"], expected_sequence=0)
    except SequenceMismatch as exc:
        print("segment already has", exc.actual)
"""

from __future__ import annotations


class StreamsError(Exception):
    """Base of every Streams error (its status: :func:`streams.status.code_of`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(StreamsError):
    """A field of the request is malformed or over a limit; nothing was written."""


class FailedPrecondition(StreamsError):
    """A compare-and-set check failed; nothing was written."""


class SequenceMismatch(FailedPrecondition):
    """``expected_sequence`` did not match the segment's last sequence."""

    def __init__(self, message: str, segment: str = "", actual: int = 0) -> None:
        super().__init__(message)
        self.segment = segment
        self.actual = actual


class OffsetMismatch(FailedPrecondition):
    """``expected_offset`` did not match the stored offset."""

    def __init__(self, message: str, actual: int | None = None) -> None:
        super().__init__(message)
        self.actual = actual


class AlreadyExists(StreamsError):
    """A ``transaction_id`` was reused with different writes."""


class NotFound(StreamsError):
    """Nothing there: Peek on an empty target, GetOffset never committed."""


class OutOfRange(StreamsError):
    """A committed offset lies past the target's last offset."""


class ResourceExhausted(StreamsError):
    """The request is larger than the server accepts, or the disk is full."""


class Unavailable(StreamsError):
    """The server is shutting down or has stopped accepting writes; retry later."""


class Unimplemented(StreamsError):
    """This server's storage backend does not support the operation (yet)."""


class DataLoss(StreamsError):
    """Stored data is damaged (a checksum failed) or missing: what was asked for
    cannot be served, and nothing short of it is. The message names the target
    or the file; the operator restores it (see docs/guarantees.md)."""


class Unauthenticated(StreamsError):
    """No bearer token, or one the server does not know."""


class PermissionDenied(StreamsError):
    """The token does not allow this action on this space."""


class DeadlineExceeded(StreamsError):
    """The call's deadline passed before the server answered (it may still have
    acted: retry a Produce with the same transaction_id)."""


class Cancelled(StreamsError):
    """The call was cancelled before it finished."""


class InvariantViolation(RuntimeError):
    """A state the code rules out was reached: a bug, never the client's fault.
    Not a :class:`StreamsError`: the server logs it with its traceback and
    answers INTERNAL. Raised by checks that always run (``python -O`` strips
    ``assert``)."""
