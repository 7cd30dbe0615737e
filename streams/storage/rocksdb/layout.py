"""The RocksDB engine's on-disk layout: keys, value formats, format version.

Key encoding: how spaces, segments, sequences and offsets map to RocksDB keys.

Every key starts with a one-byte tag naming its key range, then names and
numbers. A name is its UTF-8 bytes followed by a 0x00 terminator: valid names
never contain U+0000, so the terminator makes the encoding prefix-free
(segment ``a`` ends in ``a\\x00`` and can never be a prefix of ``ab\\x00``) and
keeps byte order (``a\\x00`` sorts before ``ab\\x00`` because 0x00 is the
smallest byte). Numbers are 8-byte big-endian, so byte order is numeric order.

    R space 0 segment 0 seq        -> chunk of records from this sequence on (segment order)
    P space 0 position             -> the same chunk, from this position on (space order)
    M space 0 position             -> a merged run: the records of consecutive small P
                                      chunks from this position on, as one chunk (a
                                      copy read by plain space reads; see :mod:`.merge`)
    N space 0 segment 0 seq        -> a merged run of a segment's small R chunks
    S space 0 segment 0            -> segment catalog (:data:`SEGMENT_CATALOG`)
    A space 0                      -> space catalog (:data:`SPACE_CATALOG`)
    C space 0                      -> space config (:data:`SPACE_CONFIG`)
    O consumer 0 space 0 segment 0 -> committed offset (segment empty: space-level)
    Q space 0 segment 0 consumer   -> empty: the offsets of a target, found without
                                      scanning every offset when it is deleted
    D space 0 txid                 -> dedupe entry
    X expiry space 0 txid          -> dedupe expiry index (sweeping in time order)
    V                              -> the on-disk format version (u64)
    G space 0 group 0              -> consumer group: progress head, config (:data:`GROUP_HEAD`)
    K space 0 group 0 position     -> the positions one settle settled above the group's
                                      acked_through (as it was then), keyed by the highest:
                                      the gaps down from it, varints (empty: that one alone)

A group's progress is its head (acked_through, parked count, and how far
its K keys were collected) plus one K key per settle, holding the positions
it settled above acked_through, so a settle writes what it settles, never
the whole set (see :mod:`.groups`). A K key holds no position above its own,
so K keys at or below acked_through are stale: readers ignore them, and a settle
now and then deletes them with one range tombstone from the head's
collected point + 1 to acked_through + 1 (ranges that never nest); see
``RocksStore.settle_group``. Groups are keyed apart from their space's
records and catalog (a space delete keeps them).

Values: chunks of framed ``Record`` messages under R and P (see
:mod:`.chunks`), and the fixed-size structs below. Any change to a key or a
value format is a new :data:`FORMAT_VERSION`: a server refuses a data
directory whose version it does not know (see :func:`format_version`). A new
key range (tag) that older code never reads is not such a change: the G and K
ranges of consumer groups came in format 2 as it was (code from before groups
skips them, and keeps every other key as it was). So did the M and N
ranges of merged runs: older code never reads it, and what a run holds stays true
(a durable position's record never changes).
"""

from __future__ import annotations

import struct

# The layout this code writes and reads. Data directories written before the
# version was stored have no V key and are version 1; version 1 is migrated to
# 2 once at open (see :mod:`.migrate`), which added first offsets, counts,
# bytes and flags to the catalog entries, the config and the offset index.
FORMAT_VERSION = 2
KNOWN_FORMATS = frozenset({1, 2})

# Segment catalog: last sequence, last position, first retained sequence,
# retained bytes, flags (DELETED), last timestamp ns.
SEGMENT_CATALOG = struct.Struct(">QQQQBQ")
# Space catalog: last position, first retained position, retained records,
# retained bytes, timestamp of the first retained record, holes (positions up
# to this may hold records their segment no longer retains), deleted through
# (a segment whose last position is at or below it was deleted with the
# space), flags (DELETED, CONFIGURED), last timestamp ns.
#
# The timestamp goes last: an entry often ends its write in the WAL, and one
# that ended in zero bytes would look like a power cut's zero fill to the
# WAL check (see .wal) were it damaged.
SPACE_CATALOG = struct.Struct(">QQQQQQQBQ")
# Version 1's entries, read only by the migration.
SEGMENT_CATALOG_V1 = struct.Struct(">QQQ")  # last sequence, last position, last timestamp ns
SPACE_CATALOG_V1 = struct.Struct(">QQ")  # last position, last timestamp ns
# Space config: has a retention policy, max age ns, max records per segment, max bytes.
SPACE_CONFIG = struct.Struct(">BQQQ")
DELETED = 1
CONFIGURED = 2
DEDUPE_HEAD = struct.Struct(">Q32s")  # expires ns, fingerprint; then ProduceResponse bytes
# Group head: acked_through (as last given), parked records, collected (no K
# key of the group at or below it is left); then the config as
# streams.storage.groups encodes it (ending in a non-zero byte: see above).
GROUP_HEAD = struct.Struct(">QQQ")

RECORD = b"R"
POSITION = b"P"
MERGED = b"M"
SEGMENT_MERGED = b"N"
SEGMENT = b"S"
SPACE = b"A"
OFFSET = b"O"
DEDUPE = b"D"
CONFIG = b"C"
OFFSET_INDEX = b"Q"
EXPIRY = b"X"
FORMAT = b"V"
GROUP = b"G"
SETTLED = b"K"

_U64 = struct.Struct(">Q")
U64_MAX = 2**64 - 1
TERMINATOR = b"\x00"


def name(value: str) -> bytes:
    """A name's bytes with its terminator; the name must not contain U+0000."""
    raw = value.encode("utf-8")
    if TERMINATOR in raw:  # validation refuses such names before they get here
        raise ValueError(f"name {value!r} contains U+0000, which would end it early")
    return raw + TERMINATOR


def u64(value: int) -> bytes:
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{value} does not fit an unsigned 64-bit key number")
    return _U64.pack(value)


def read_u64(raw: bytes, offset: int = 0) -> int:
    return _U64.unpack_from(raw, offset)[0]


def segment_prefix(space: str, segment: str) -> bytes:
    return RECORD + name(space) + name(segment)


def space_prefix(space: str) -> bytes:
    return POSITION + name(space)


def record_key(space: str, segment: str, sequence: int) -> bytes:
    return segment_prefix(space, segment) + u64(sequence)


def position_key(space: str, position: int) -> bytes:
    return space_prefix(space) + u64(position)


def merged_prefix(space: str) -> bytes:
    return MERGED + name(space)


def segment_merged_prefix(space: str, segment: str | None = None) -> bytes:
    """The merged runs of a segment (of every segment of ``space``: None)."""
    prefix = SEGMENT_MERGED + name(space)
    return prefix if segment is None else prefix + name(segment)


def segment_catalog_prefix(space: str) -> bytes:
    return SEGMENT + name(space)


def segment_catalog_key(space: str, segment: str) -> bytes:
    return segment_catalog_prefix(space) + name(segment)


def space_catalog_key(space: str) -> bytes:
    return SPACE + name(space)


def offset_key(consumer: str, space: str, segment: str) -> bytes:
    # An empty segment (a space-level offset) encodes as a lone terminator,
    # which no valid segment name (1 byte or more) produces.
    return OFFSET + name(consumer) + name(space) + segment.encode("utf-8") + TERMINATOR


def split_offset_key(key: bytes) -> tuple[str, str, str]:
    """The consumer, space and segment ("" for a space-level offset) of an offset key."""
    parts = key[1:].split(TERMINATOR)
    if key[:1] != OFFSET or len(parts) != 4 or parts[3]:
        raise ValueError(f"not an offset key: {key!r}")
    consumer, space, segment, _ = (part.decode("utf-8") for part in parts)
    return consumer, space, segment


def config_key(space: str) -> bytes:
    return CONFIG + name(space)


def offset_index_prefix(space: str, segment: str | None = None) -> bytes:
    """The index keys of every offset of ``space`` (segment None), or of one
    target (segment "": the space-level offsets)."""
    prefix = OFFSET_INDEX + name(space)
    return prefix if segment is None else prefix + segment.encode("utf-8") + TERMINATOR


def offset_index_key(consumer: str, space: str, segment: str) -> bytes:
    return offset_index_prefix(space, segment) + consumer.encode("utf-8")


def offset_key_of_index(key: bytes) -> bytes:
    """The offset key that index key ``key`` stands for."""
    parts = key[1:].split(TERMINATOR)
    if key[:1] != OFFSET_INDEX or len(parts) != 3:
        raise ValueError(f"not an offset index key: {key!r}")
    space, segment, consumer = (part.decode("utf-8") for part in parts)
    return offset_key(consumer, space, segment)


def dedupe_key(space: str, transaction_id: str) -> bytes:
    return DEDUPE + name(space) + transaction_id.encode("utf-8")


def expiry_key(expires_ns: int, space: str, transaction_id: str) -> bytes:
    return EXPIRY + u64(expires_ns) + name(space) + transaction_id.encode("utf-8")


def split_expiry_key(key: bytes) -> tuple[int, bytes]:
    """The expiry time and the dedupe key that an expiry key points at."""
    if key[:1] != EXPIRY or len(key) < 9:
        raise ValueError(f"not an expiry key: {key!r}")
    return read_u64(key, 1), DEDUPE + key[9:]


def group_prefix(space: str) -> bytes:
    """The head keys of every group of ``space``."""
    return GROUP + name(space)


def group_key(space: str, group: str) -> bytes:
    return group_prefix(space) + name(group)


def settled_space_prefix(space: str) -> bytes:
    """The settled-position keys of every group of ``space``."""
    return SETTLED + name(space)


def settled_prefix(space: str, group: str) -> bytes:
    return settled_space_prefix(space) + name(group)


def first_name(key: bytes, prefix: bytes) -> str:
    """The name that follows ``prefix`` in ``key`` (up to its terminator)."""
    end = key.index(TERMINATOR, len(prefix))
    return key[len(prefix) : end].decode("utf-8")


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key above every key that starts with ``prefix``.

    Prefixes here end in a terminator or a tag, never in 0xFF, so
    incrementing the last byte is exact.
    """
    if not prefix or prefix[-1] == 0xFF:
        raise ValueError(f"no key range ends {prefix!r}: it is empty or ends in 0xFF")
    return prefix[:-1] + bytes([prefix[-1] + 1])


class UnknownFormat(Exception):
    """The data directory is in an on-disk format this code does not read."""


def format_version(raw: bytes | None) -> int:
    """The format version stored as ``raw`` (the value of :data:`FORMAT`; None:
    a directory from before versions were stored, which is version 1).
    :class:`UnknownFormat` unless this code reads that version."""
    if raw is None:
        return 1
    version = read_u64(raw) if len(raw) == _U64.size else None
    if version not in KNOWN_FORMATS:
        shown = f"{raw!r} (not a version number)" if version is None else str(version)
        newer = " (written by a newer Streams?)" if version and version > FORMAT_VERSION else ""
        raise UnknownFormat(
            f"on-disk format version {shown}{newer}; this server reads version "
            f"{', '.join(map(str, sorted(KNOWN_FORMATS)))} only; the data was left as it is"
        )
    return version
