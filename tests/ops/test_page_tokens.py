"""Page tokens are signed (HMAC-SHA256 under the server's key): a token the
server did not issue is INVALID_ARGUMENT; --page-token-key lets servers behind
one address, and restarts, honour each other's tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams.page_tokens import MAX_TOKEN_CHARS, PageKeyError, PageTokens
from streams.v1 import streams_pb2 as pb
from tests.support.inproc import InProcessServer

from .helpers import CALL_TIMEOUT, produce, rpc_code, run_python

SPACES = ["a", "b", "c", "d"]


def seed(server: InProcessServer) -> None:
    for space in SPACES:
        produce(server.stub, space, "s1", [b"x"])
        produce(server.stub, space, "s2", [b"x"])


def list_spaces(server: InProcessServer, token: str = "", size: int = 1) -> pb.ListSpacesResponse:
    request = pb.ListSpacesRequest(page_size=size, page_token=token)
    return server.stub.ListSpaces(request, timeout=CALL_TIMEOUT)


def spaces_code(server: InProcessServer, token: str) -> grpc.StatusCode:
    return rpc_code(lambda: list_spaces(server, token))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    with InProcessServer(tmp_path / "data") as srv:
        seed(srv)
        yield srv


def test_a_token_forged_with_a_checksum_is_refused(server: InProcessServer) -> None:
    """Anyone could compute the old CRC32 "signature": such a token must not work."""
    name = b"b"
    crc = zlib.crc32(b"spaces\x00" + name).to_bytes(4, "big")
    forged = b64(b"\x01" + crc + name)
    assert spaces_code(server, forged) == grpc.StatusCode.INVALID_ARGUMENT


def test_forged_and_tampered_tokens_are_refused(server: InProcessServer) -> None:
    issued = list_spaces(server).next_page_token
    assert issued
    assert [s.name for s in list_spaces(server, issued, 10).spaces] == ["b", "c", "d"]
    raw = base64.urlsafe_b64decode(issued + "=" * (-len(issued) % 4))
    candidates = {
        "other name": b64(raw[:-1] + b"c"),
        "flipped mac bit": b64(raw[:1] + bytes([raw[1] ^ 1]) + raw[2:]),
        "guessed key": b64(
            raw[:1] + hmac.new(b"k" * 32, b"\x02spaces\x00c", hashlib.sha256).digest()[:16] + b"c"
        ),
        "truncated": issued[:-2],
        "not base64": "!!!!",
        "empty name": b64(raw[:17]),
        "oversized": "A" * (MAX_TOKEN_CHARS + 1),
    }
    for what, token in candidates.items():
        code = spaces_code(server, token)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, what


def test_a_token_only_serves_the_listing_it_came_from(server: InProcessServer) -> None:
    spaces_token = list_spaces(server).next_page_token
    segments = server.stub.ListSegments(
        pb.ListSegmentsRequest(space="a", page_size=1), timeout=CALL_TIMEOUT
    )
    segments_token = segments.next_page_token
    assert spaces_code(server, segments_token) == grpc.StatusCode.INVALID_ARGUMENT
    for space, token in (("a", spaces_token), ("b", segments_token)):
        code = rpc_code(
            lambda space=space, token=token: server.stub.ListSegments(
                pb.ListSegmentsRequest(space=space, page_token=token), timeout=CALL_TIMEOUT
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (space, token)


def test_tokens_from_another_server_or_before_a_restart_are_refused(tmp_path: Path) -> None:
    """Without --page-token-key each process has its own random key."""
    with InProcessServer(tmp_path / "one") as one, InProcessServer(tmp_path / "two") as two:
        seed(one)
        seed(two)
        token = list_spaces(one).next_page_token
        assert spaces_code(two, token) == grpc.StatusCode.INVALID_ARGUMENT
    with InProcessServer(tmp_path / "one") as again:
        assert spaces_code(again, token) == grpc.StatusCode.INVALID_ARGUMENT


def test_a_shared_key_serves_tokens_across_servers_and_restarts(tmp_path: Path) -> None:
    key = tmp_path / "page.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    with InProcessServer(tmp_path / "one", page_token_key=key) as one:
        seed(one)
        token = list_spaces(one).next_page_token
    with InProcessServer(tmp_path / "one", page_token_key=key) as restarted:
        assert [s.name for s in list_spaces(restarted, token, 10).spaces] == ["b", "c", "d"]


@pytest.mark.parametrize("content", ["short", None], ids=["too-short", "missing"])
def test_a_bad_key_file_exits_2_with_one_line(tmp_path: Path, content: str | None) -> None:
    key = tmp_path / "page.key"
    if content is not None:
        key.write_text(content)
    result = run_python(
        ["server.py", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "data"),
         "--page-token-key", str(key)]
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "listening on" not in result.stdout
    assert result.stderr.count("\n") == 1 and "--page-token-key" in result.stderr, result.stderr
    with pytest.raises(PageKeyError):
        PageTokens.load(key)
