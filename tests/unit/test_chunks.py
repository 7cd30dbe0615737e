"""The chunk format: any run of a chunk's records is one slice, framed for the wire."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams import codec
from streams.storage.rocksdb.chunks import Chunk, pack

records = st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=40)


@given(records, st.integers(min_value=1, max_value=20_000))
def test_pack_cuts_records_into_chunks_that_read_back(items: list[bytes], limit: int) -> None:
    chunks = list(pack(items, limit))
    read_back = []
    for index, value in chunks:
        chunk = Chunk(value)
        assert index == len(read_back)
        # Only the last record may take a chunk past the limit.
        assert chunk.size(0, chunk.count - 1) < limit
        read_back += [chunk.record(i) for i in range(chunk.count)]
    assert read_back == items


@given(records, st.data())
def test_any_run_is_a_framed_slice(items: list[bytes], data: st.DataObject) -> None:
    (_, value), *_ = pack(items, 10**9)
    chunk = Chunk(value)
    start = data.draw(st.integers(min_value=0, max_value=len(items) - 1))
    stop = data.draw(st.integers(min_value=start + 1, max_value=len(items)))
    framed = chunk.framed(start, stop)
    assert framed == codec.consume_response(items[start:stop])
    assert chunk.size(start, stop) == len(framed)


@given(records, st.integers(min_value=0, max_value=50_000), st.booleans())
def test_fit_takes_the_longest_run_within_the_budget(
    items: list[bytes], budget: int, at_least_one: bool
) -> None:
    (_, value), *_ = pack(items, 10**9)
    chunk = Chunk(value)
    end = chunk.fit(0, len(items), budget, at_least_one)
    assert chunk.size(0, end) <= budget or (at_least_one and end == 1)
    assert end == len(items) or chunk.size(0, end + 1) > budget
    assert end >= (1 if at_least_one else 0)
