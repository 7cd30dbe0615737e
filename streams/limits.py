"""Every limit the server enforces, named, with the contract's defaults.

Each field is also a server option (``--max-payload-bytes`` and
``STREAMS_MAX_PAYLOAD_BYTES``, ...); see :mod:`streams.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

KIB = 1024
MIB = 1024 * KIB

# Fixed by the contract, not options: clients rely on them.
MAX_NAME_BYTES = 255
MAX_TRANSACTION_ID_BYTES = 128
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# The default gRPC client refuses messages over 4 MiB; responses stay under.
RESPONSE_BYTES_CAP = 4 * MIB - 16 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    """The configurable limits; defaults are the contract's."""

    max_payload_bytes: int = 1 * MIB
    max_records_per_produce: int = 10_000
    max_metadata_pairs: int = 64
    max_metadata_key_bytes: int = 255
    max_metadata_value_bytes: int = 4 * KIB
    max_request_bytes: int = 16 * MIB
    max_batch: int = 10_000
    default_batch: int = 1_000
    # Consume responses are cut at this size (one record always fits). It also
    # bounds what a follower that stops reading holds in the server: about one
    # response, parked in gRPC's flow-controlled send buffer.
    max_response_bytes: int = 1 * MIB

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field.name} must be a positive integer, got {value!r}")
        if self.default_batch > self.max_batch:
            raise ValueError(
                f"default_batch ({self.default_batch}) is over max_batch ({self.max_batch})"
            )
        if self.max_response_bytes > RESPONSE_BYTES_CAP:
            raise ValueError(
                f"max_response_bytes ({self.max_response_bytes}) is over the "
                f"{RESPONSE_BYTES_CAP}-byte cap (clients refuse messages over 4 MiB)"
            )
        if self.largest_record_bytes() > RESPONSE_BYTES_CAP:
            raise ValueError(
                f"a record may reach {self.largest_record_bytes()} bytes with these limits, "
                f"over the {RESPONSE_BYTES_CAP}-byte response cap"
            )

    def largest_record_bytes(self) -> int:
        """An upper bound on one stored record's size (names, numbers, framing)."""
        per_pair = self.max_metadata_key_bytes + self.max_metadata_value_bytes + 16
        return (
            self.max_payload_bytes
            + self.max_metadata_pairs * per_pair
            + 2 * MAX_NAME_BYTES
            + MAX_TRANSACTION_ID_BYTES
            + 128
        )
