"""ListSpaces with a token scans only the name ranges the token's patterns can
match (the literal prefix of each pattern), in name order across patterns: its
cost follows what the token can see, not how many spaces the server holds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.auth import Caller, Grant, TokenAuth, literal_prefix
from streams.model import SegmentAppend, Transaction
from streams.storage.rocksdb.store import RocksStore, StoreOptions
from streams.v1 import streams_pb2 as pb
from tests.support.inproc import InProcessServer

from .helpers import CALL_TIMEOUT, bearer, produce, write_tokens

NOISE = [f"noise-{n:04d}" for n in range(2000)]
SEEN = ["billing", "orders", "orders-a", "orders-b", "ordinal"]


def caller(*patterns: str) -> Caller:
    return Caller(Grant(patterns, frozenset({"read"})))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RocksStore]:
    async def fill() -> RocksStore:
        opened = RocksStore.open(tmp_path_factory.mktemp("scan") / "data", StoreOptions(sync=False))
        for space in [*NOISE, *SEEN]:
            await opened.produce(Transaction(space, (SegmentAppend("s", (b"",), None),), "", b""))
        return opened

    loop = asyncio.new_event_loop()
    opened = loop.run_until_complete(fill())
    yield opened
    loop.run_until_complete(opened.close())
    loop.close()


@pytest.mark.parametrize(
    ("patterns", "visible", "most_looked_at"),
    [
        (("secret*",), [], 0),
        (("orders*", "billing"), ["billing", "orders", "orders-a", "orders-b"], 4),
        (("ord*", "orders-[ab]", "billing"), SEEN, 5),
        (("orders-?",), ["orders-a", "orders-b"], 2),
    ],
    ids=["sees-none", "two-patterns", "overlapping", "wildcard-in-range"],
)
def test_the_scan_visits_only_names_the_token_may_match(
    store: RocksStore, patterns: tuple[str, ...], visible: list[str], most_looked_at: int
) -> None:
    who = caller(*patterns)
    looked_at: list[str] = []

    def include(name: str) -> bool:
        looked_at.append(name)
        return who.allows("read", name)

    found = asyncio.run(store.list_spaces(None, 1000, include, who.prefixes("read")))
    assert [info.name for info in found] == visible
    assert len(looked_at) <= most_looked_at, f"scanned {len(looked_at)} names: {looked_at[:5]}"
    # Paging through the ranges, one by one, gives the same names in order.
    paged: list[str] = []
    after = None
    while page := asyncio.run(store.list_spaces(after, 1, include, who.prefixes("read"))):
        paged.append(page[0].name)
        after = page[0].name
    assert paged == visible


def test_prefixes_of_patterns() -> None:
    assert literal_prefix("orders-[ab]*") == "orders-"
    assert literal_prefix("a?c") == "a"
    assert literal_prefix("exact") == "exact"
    assert caller("orders*", "ord*", "billing", "bill").prefixes("read") == ("bill", "ord")
    assert caller("*-eu", "orders").prefixes("read") is None  # must scan everything
    assert caller("orders").prefixes("write") == ()


def test_listing_through_the_service_follows_the_patterns(tmp_path: Path) -> None:
    tokens = [
        {"token": "mixed", "spaces": ["z*", "ord*", "orders-[ab]", "bill?ng"], "access": ["read"]},
        {"token": "none", "spaces": ["secret*"], "access": ["read"]},
        {"token": "admin", "spaces": ["*"], "access": ["read", "write"]},
    ]
    auth = TokenAuth.load(write_tokens(tmp_path / "tokens.json", tokens))
    names = ["a", "billing", "billxng", "orders", "orders-a", "orders-c", "ordinal", "zeta", "zz"]
    with InProcessServer(tmp_path / "data", auth=auth) as server:
        for name in names:
            produce(server.stub, name, "s", [b"x"], call_metadata=bearer("admin"))

        def listing(token: str, size: int) -> list[str]:
            seen, page_token = [], ""
            while True:
                reply = server.stub.ListSpaces(
                    pb.ListSpacesRequest(page_size=size, page_token=page_token),
                    metadata=bearer(token),
                    timeout=CALL_TIMEOUT,
                )
                seen += [s.name for s in reply.spaces]
                if not (page_token := reply.next_page_token):
                    return seen

        mixed = ["billing", "billxng", "orders", "orders-a", "orders-c", "ordinal", "zeta", "zz"]
        for size in (1, 2, 3, 100):
            assert listing("mixed", size) == mixed
            assert listing("none", size) == []
            assert listing("admin", size) == names
