"""Key encoding properties, over arbitrary valid names (any Unicode, not only ASCII)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.limits import MAX_NAME_BYTES
from streams.storage.rocksdb import layout as keys

# Valid names: 1 to 255 UTF-8 bytes, no control characters (U+0000-U+001F, U+007F).
names = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",), blacklist_characters=[*map(chr, range(0x20)), "\x7f"]
    ),
    min_size=1,
).filter(lambda n: len(n.encode("utf-8")) <= MAX_NAME_BYTES)
numbers = st.integers(min_value=0, max_value=keys.U64_MAX)
record = st.tuples(names, names, numbers)


def _order(space: str, segment: str, sequence: int) -> tuple[bytes, bytes, int]:
    return space.encode("utf-8"), segment.encode("utf-8"), sequence


@given(record, record)
def test_record_keys_are_injective_and_keep_order(a: tuple, b: tuple) -> None:
    ka, kb = keys.record_key(*a), keys.record_key(*b)
    assert (ka == kb) == (a == b)
    assert (ka < kb) == (_order(*a) < _order(*b))


@given(record, names, names)
def test_segment_prefix_matches_only_its_own_segment(a: tuple, space: str, segment: str) -> None:
    key = keys.record_key(*a)
    owns = key.startswith(keys.segment_prefix(space, segment))
    assert owns == (a[0] == space and a[1] == segment)
    # A scan bounded by the prefix's end holds exactly the prefix's keys.
    prefix = keys.segment_prefix(space, segment)
    assert (prefix <= key < keys.prefix_end(prefix)) == owns


@given(names, numbers, names, numbers)
def test_space_keys_are_prefix_safe_and_ordered(s1: str, p1: int, s2: str, p2: int) -> None:
    k1, k2 = keys.position_key(s1, p1), keys.position_key(s2, p2)
    assert k1.startswith(keys.space_prefix(s2)) == (s1 == s2)
    assert (k1 < k2) == ((s1.encode(), p1) < (s2.encode(), p2))


@given(names, names, st.one_of(st.just(""), names), names, names, st.one_of(st.just(""), names))
def test_offset_keys_are_injective(c1: str, s1: str, g1: str, c2: str, s2: str, g2: str) -> None:
    same = (c1, s1, g1) == (c2, s2, g2)
    assert (keys.offset_key(c1, s1, g1) == keys.offset_key(c2, s2, g2)) == same


@given(names, names)
def test_catalog_names_decode_back(space: str, segment: str) -> None:
    assert keys.first_name(keys.space_catalog_key(space), keys.SPACE) == space
    key = keys.segment_catalog_key(space, segment)
    assert keys.first_name(key, keys.segment_catalog_prefix(space)) == segment


@given(numbers, names, st.text(min_size=1, max_size=128))
def test_expiry_key_points_at_its_dedupe_key(expires: int, space: str, txid: str) -> None:
    found, dedupe = keys.split_expiry_key(keys.expiry_key(expires, space, txid))
    assert (found, dedupe) == (expires, keys.dedupe_key(space, txid))


def test_key_ranges_do_not_overlap() -> None:
    tags = [
        keys.RECORD,
        keys.POSITION,
        keys.SEGMENT,
        keys.SPACE,
        keys.OFFSET,
        keys.DEDUPE,
        keys.EXPIRY,
    ]
    assert len(set(tags)) == len(tags)
    assert all(len(tag) == 1 for tag in tags)
