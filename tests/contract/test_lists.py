"""ListSpaces and ListSegments: order, paging, page tokens, the info they carry."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from tests.support.process import ServerProcess

from .helpers import (
    Stub,
    assert_status,
    produce,
    produce_in_parts,
    produce_writes,
    ts_key,
    unique,
    write,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT

# Byte order, which is not case-insensitive order nor UTF-16 order:
# "B" < "a"; "a" < "a b" < "a!" < "a/b" < "a:b" < "ab"; U+FF61 < U+1F600 in UTF-8
# (in UTF-16 the emoji's surrogate 0xD83D sorts first).
ODD_NAMES = ["z", "a", "B", "ab", "a:b", "a/b", "a!", "a b", "é", "\uff61", "\U0001f600", "Z9", "~"]


def by_bytes(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: n.encode("utf-8"))


def list_segments_pages(stub: Stub, space: str, page_size: int) -> list[pb.ListSegmentsResponse]:
    pages, token = [], ""
    while True:
        resp = stub.ListSegments(
            pb.ListSegmentsRequest(space=space, page_size=page_size, page_token=token)
        )
        pages.append(resp)
        token = resp.next_page_token
        if not token:
            return pages
        assert len(pages) < 10_000


def list_spaces_pages(stub: Stub, page_size: int) -> list[pb.ListSpacesResponse]:
    pages, token = [], ""
    while True:
        resp = stub.ListSpaces(pb.ListSpacesRequest(page_size=page_size, page_token=token))
        pages.append(resp)
        token = resp.next_page_token
        if not token:
            return pages
        assert len(pages) < 10_000


def segment_names(pages: list[pb.ListSegmentsResponse]) -> list[str]:
    return [s.name for p in pages for s in p.segments]


def space_names(pages: list[pb.ListSpacesResponse]) -> list[str]:
    return [s.name for p in pages for s in p.spaces]


def test_segments_ordered_by_utf8_bytes(stub: Stub, space: str) -> None:
    produce_writes(stub, space, [write(n, [b"x"]) for n in ODD_NAMES])
    names = segment_names(list_segments_pages(stub, space, 0))
    assert names == by_bytes(ODD_NAMES)
    assert names.index("B") < names.index("a") < names.index("é")
    assert names.index("\uff61") < names.index("\U0001f600")


def test_segment_info_values(stub: Stub, space: str) -> None:
    r1 = produce(stub, space, "b", [b"1", b"2"])
    r2 = produce_writes(stub, space, [write("a", [b"1"]), write("c", [b"1"] * 3)])
    r3 = produce(stub, space, "b", [b"3"])
    resp = stub.ListSegments(pb.ListSegmentsRequest(space=space))
    info = {s.name: s for s in resp.segments}
    assert [s.name for s in resp.segments] == ["a", "b", "c"]
    assert resp.next_page_token == ""
    assert (info["a"].last_sequence, info["a"].last_position) == (1, 3)
    assert (info["b"].last_sequence, info["b"].last_position) == (3, 7)
    assert (info["c"].last_sequence, info["c"].last_position) == (3, 6)
    assert ts_key(info["a"].last_timestamp) == ts_key(r2.timestamp)
    assert ts_key(info["c"].last_timestamp) == ts_key(r2.timestamp)
    assert ts_key(info["b"].last_timestamp) == ts_key(r3.timestamp)
    assert ts_key(r1.timestamp) <= ts_key(r3.timestamp)


def test_segments_prefix_safe(stub: Stub) -> None:
    s = unique("s")
    produce_writes(stub, s, [write("a", [b"1"]), write("ab", [b"1", b"2"])])
    produce(stub, s + "1", "zzz", [b"1"] * 4)
    produce(stub, s + "/a", "b", [b"1"])
    resp = stub.ListSegments(pb.ListSegmentsRequest(space=s))
    assert [(x.name, x.last_sequence) for x in resp.segments] == [("a", 1), ("ab", 2)]
    resp = stub.ListSegments(pb.ListSegmentsRequest(space=s + "1"))
    assert [(x.name, x.last_sequence, x.last_position) for x in resp.segments] == [("zzz", 4, 4)]


def test_unknown_space_lists_no_segments(stub: Stub) -> None:
    resp = stub.ListSegments(pb.ListSegmentsRequest(space=unique("nospace")))
    assert list(resp.segments) == []
    assert resp.next_page_token == ""


@pytest.fixture(scope="module")
def big_space(server: ServerProcess, max_records: int) -> tuple[str, list[str]]:
    """One space with 1,050 segments, written by as few Produces as the
    backend takes (one on most)."""
    space = unique("big")
    names = [f"seg{i:05d}" for i in range(1_050)]
    produce_in_parts(server.stub, space, [write(n, [b"x"]) for n in reversed(names)], max_records)
    return space, names


def test_segments_page_size_zero_means_100(stub: Stub, big_space: tuple[str, list[str]]) -> None:
    space, names = big_space
    resp = stub.ListSegments(pb.ListSegmentsRequest(space=space, page_size=0))
    assert [s.name for s in resp.segments] == names[:100]
    assert resp.next_page_token != ""


def test_segments_page_size_capped_at_1000(stub: Stub, big_space: tuple[str, list[str]]) -> None:
    space, names = big_space
    for size in (1_001, 5_000, 2**31 - 1):
        resp = stub.ListSegments(pb.ListSegmentsRequest(space=space, page_size=size))
        assert [s.name for s in resp.segments] == names[:1_000], size
        assert resp.next_page_token != ""
        rest = stub.ListSegments(
            pb.ListSegmentsRequest(space=space, page_size=size, page_token=resp.next_page_token)
        )
        assert [s.name for s in rest.segments] == names[1_000:]
        assert rest.next_page_token == ""
    exact = stub.ListSegments(pb.ListSegmentsRequest(space=space, page_size=1_000))
    assert len(exact.segments) == 1_000


@pytest.mark.parametrize("page_size", [1, 7, 100, 350, 1_000])
def test_segments_paging_covers_everything_once(
    stub: Stub, big_space: tuple[str, list[str]], page_size: int
) -> None:
    space, names = big_space
    pages = list_segments_pages(stub, space, page_size)
    assert segment_names(pages) == names
    assert all(len(p.segments) == page_size for p in pages[:-1])
    assert 1 <= len(pages[-1].segments) <= page_size
    assert pages[-1].next_page_token == ""
    positions = sorted(s.last_position for p in pages for s in p.segments)
    assert positions == list(range(1, 1_051))


LISTS: dict[str, Callable[..., object]] = {
    "spaces": lambda stub, **kw: stub.ListSpaces(pb.ListSpacesRequest(**kw)),
    "segments": lambda stub, **kw: stub.ListSegments(pb.ListSegmentsRequest(space="s", **kw)),
}


@pytest.mark.parametrize("which", sorted(LISTS))
@pytest.mark.parametrize("page_size", [-1, -7, -(2**31)])
def test_negative_page_size_rejected(stub: Stub, which: str, page_size: int) -> None:
    assert_status(
        lambda: LISTS[which](stub, page_size=page_size), INVALID, "page_size", str(page_size)
    )


@pytest.mark.parametrize("which", sorted(LISTS))
@pytest.mark.parametrize("token", ["garbage", "!!!not-a-token!!!", "é\u20ac", "\x00"])
def test_garbage_page_token_rejected(stub: Stub, which: str, token: str) -> None:
    assert_status(lambda: LISTS[which](stub, page_token=token), INVALID, "page_token")


def test_spaces_on_an_empty_store(fresh_server: ServerProcess) -> None:
    resp = fresh_server.stub.ListSpaces(pb.ListSpacesRequest())
    assert list(resp.spaces) == []
    assert resp.next_page_token == ""


def test_list_spaces(fresh_server: ServerProcess) -> None:
    stub = fresh_server.stub
    # Prefix pairs (s, s1) and byte order.
    odd = [*ODD_NAMES, "s", "s1", "s/", "a/b:c"]
    many = [f"space{i:04d}" for i in range(140)]
    last: dict[str, pb.ProduceResponse] = {}
    for n in odd:
        last[n] = produce(stub, n, "seg", [b"x"])
    for n in many:
        last[n] = produce(stub, n, "seg", [b"x"])
    last["s"] = produce_writes(stub, "s", [write("a", [b"1"]), write("b", [b"2", b"3"])])
    everything = by_bytes(odd + many)

    # page_size 0 = 100
    first = stub.ListSpaces(pb.ListSpacesRequest(page_size=0))
    assert [s.name for s in first.spaces] == everything[:100]
    assert first.next_page_token != ""
    default = stub.ListSpaces(pb.ListSpacesRequest())
    assert [s.name for s in default.spaces] == everything[:100]

    for page_size in (1, 9, 100, 1_000, 1_001):
        pages = list_spaces_pages(stub, page_size)
        assert space_names(pages) == everything, page_size
        cap = min(page_size, 1_000)
        assert all(len(p.spaces) == cap for p in pages[:-1])
        assert pages[-1].next_page_token == ""

    info = {s.name: s for s in list_spaces_pages(stub, 1_000)[0].spaces}
    for n, resp in last.items():
        assert info[n].last_position == resp.last_position, n
        assert ts_key(info[n].last_timestamp) == ts_key(resp.timestamp), n
    assert info["s"].last_position == 4
    assert info["s1"].last_position == 1


def test_tampered_page_token_rejected(stub: Stub, big_space: tuple[str, list[str]]) -> None:
    space, _ = big_space
    token = stub.ListSegments(pb.ListSegmentsRequest(space=space, page_size=10)).next_page_token
    assert token
    for bad in (token + "!", token[: len(token) // 2], token[::-1]):
        if bad == token:
            continue
        assert_status(
            lambda bad=bad: stub.ListSegments(
                pb.ListSegmentsRequest(space=space, page_size=10, page_token=bad)
            ),
            INVALID,
            "page_token",
        )
