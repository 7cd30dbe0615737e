"""Bearer-token auth (--auth-tokens): who may call what, list filtering, SIGHUP
reload, bad files."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from streams.auth import TokenAuth
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.inproc import InProcessServer
from tests.support.process import ServerProcess

from .helpers import (
    CALL_TIMEOUT,
    SERVICE,
    SERVING,
    bearer,
    health_status,
    produce,
    rpc_code,
    run_python,
    wait_until,
    write_tokens,
)

TOKENS = [
    {"token": "rw-orders", "spaces": ["orders*", "billing"], "access": ["read", "write"]},
    {"token": "ro-orders", "spaces": ["orders*"], "access": ["read"]},
    {"token": "wo-logs", "spaces": ["logs"], "access": ["write"]},
    {"token": "admin", "spaces": ["*"], "access": ["read", "write"]},
]
SPACES = ["billing", "billing-eu", "logs", "orders", "orders-a", "orders-b", "orders-c", "zeta"]
Metadata = tuple[tuple[str, str], ...] | None


def calls(stub: pb_grpc.StreamsServiceStub, space: str) -> dict[str, Callable[[Metadata], Any]]:
    """Each method of the service on ``space``, as f(metadata) -> result."""
    t = CALL_TIMEOUT
    write = pb.SegmentWrite(segment="s", records=[pb.RecordInput(payload=b"p")])
    return {
        "Produce": lambda m: stub.Produce(
            pb.ProduceRequest(space=space, writes=[write]), metadata=m, timeout=t
        ),
        "Consume": lambda m: list(
            stub.Consume(pb.ConsumeRequest(space=space), metadata=m, timeout=t)
        ),
        "Peek": lambda m: stub.Peek(pb.PeekRequest(space=space), metadata=m, timeout=t),
        "Commit": lambda m: stub.Commit(
            pb.CommitRequest(consumer="c", space=space, offset=1), metadata=m, timeout=t
        ),
        "GetOffset": lambda m: stub.GetOffset(
            pb.GetOffsetRequest(consumer="c", space=space), metadata=m, timeout=t
        ),
        "ListSpaces": lambda m: stub.ListSpaces(pb.ListSpacesRequest(), metadata=m, timeout=t),
        "ListSegments": lambda m: stub.ListSegments(
            pb.ListSegmentsRequest(space=space), metadata=m, timeout=t
        ),
    }


READS = ["Consume", "Peek", "GetOffset", "Commit", "ListSpaces", "ListSegments"]


def code_of(call: Callable[[Metadata], Any], metadata: Metadata) -> grpc.StatusCode:
    try:
        call(metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    tmp = tmp_path_factory.mktemp("auth")
    auth = TokenAuth.load(write_tokens(tmp / "tokens.json", TOKENS))
    with InProcessServer(tmp / "data", auth=auth) as srv:
        for space in SPACES:
            produce(srv.stub, space, "s", [b"seed"], call_metadata=bearer("admin"))
        srv.stub.Commit(
            pb.CommitRequest(consumer="c", space="orders-a", offset=1),
            metadata=bearer("admin"),
            timeout=CALL_TIMEOUT,
        )
        yield srv


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        bearer("nobody"),
        (("authorization", "Basic cnctb3JkZXJz"),),
        (("authorization", "rw-orders"),),
        (("authorization", "Bearer "),),
        (("authorization", "Bearer rw-order"),),
    ],
    ids=["no-token", "unknown", "basic-scheme", "no-scheme", "empty-token", "token-prefix"],
)
def test_no_or_unknown_token_is_unauthenticated(
    server: InProcessServer, metadata: Metadata
) -> None:
    for method, call in calls(server.stub, "orders").items():
        assert code_of(call, metadata) == grpc.StatusCode.UNAUTHENTICATED, method


def test_health_needs_no_token(server: InProcessServer) -> None:
    assert health_status(server.channel, "") == SERVING
    assert health_status(server.channel, SERVICE) == SERVING


def test_a_token_works_within_its_spaces_and_actions(server: InProcessServer) -> None:
    for space in ("orders", "orders-a", "billing"):
        for method, call in calls(server.stub, space).items():
            if method in ("Peek", "GetOffset") and space != "orders-a":
                continue  # NOT_FOUND there is fine; tested below on orders-a
            assert code_of(call, bearer("rw-orders")) == grpc.StatusCode.OK, (space, method)
    for method, call in calls(server.stub, "orders-a").items():
        expected = grpc.StatusCode.PERMISSION_DENIED if method == "Produce" else grpc.StatusCode.OK
        assert code_of(call, bearer("ro-orders")) == expected, method
    assert code_of(calls(server.stub, "logs")["Produce"], bearer("wo-logs")) == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("token", "space"),
    [("rw-orders", "zeta"), ("rw-orders", "billing-eu"), ("ro-orders", "billing")],
)
def test_a_space_outside_the_globs_is_permission_denied(
    server: InProcessServer, token: str, space: str
) -> None:
    for method, call in calls(server.stub, space).items():
        if method == "ListSpaces":
            continue  # no space in the request: filtered instead
        assert code_of(call, bearer(token)) == grpc.StatusCode.PERMISSION_DENIED, method


def test_reads_need_read_access(server: InProcessServer) -> None:
    table = calls(server.stub, "logs")
    for method in READS:
        if method == "ListSpaces":
            continue  # its own test below
        assert code_of(table[method], bearer("wo-logs")) == grpc.StatusCode.PERMISSION_DENIED, (
            method
        )


def test_list_spaces_needs_read_access(server: InProcessServer) -> None:
    """A token without read access may not list spaces at all (the issue: read
    allows the lists), rather than getting an empty list."""
    try:
        reply = server.stub.ListSpaces(
            pb.ListSpacesRequest(), metadata=bearer("wo-logs"), timeout=CALL_TIMEOUT
        )
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
    else:
        pytest.fail(f"a write-only token listed spaces: {[s.name for s in reply.spaces]}")


def list_all(server: InProcessServer, token: str, page_size: int) -> list[list[str]]:
    pages, page_token = [], ""
    while True:
        reply = server.stub.ListSpaces(
            pb.ListSpacesRequest(page_size=page_size, page_token=page_token),
            metadata=bearer(token),
            timeout=CALL_TIMEOUT,
        )
        pages.append([info.name for info in reply.spaces])
        page_token = reply.next_page_token
        if not page_token:
            return pages
        assert len(pages) < 20, "paging does not end"


@pytest.mark.parametrize("page_size", [1, 2, 3, 100])
def test_list_spaces_shows_only_allowed_spaces_and_pages_right(
    server: InProcessServer, page_size: int
) -> None:
    allowed = {
        "rw-orders": ["billing", "orders", "orders-a", "orders-b", "orders-c"],
        "ro-orders": ["orders", "orders-a", "orders-b", "orders-c"],
        "admin": SPACES,
    }
    for token, expected in allowed.items():
        pages = list_all(server, token, page_size)
        assert [name for page in pages for name in page] == expected, (token, pages)
        assert all(len(page) <= page_size for page in pages)
        # No empty page that promises more.
        assert all(pages[:-1]), pages


def test_sighup_reloads_the_token_file(tmp_path: Path) -> None:
    tokens = write_tokens(
        tmp_path / "tokens.json",
        [{"token": "old", "spaces": ["*"], "access": ["read", "write"]}],
    )
    server = ServerProcess(tmp_path / "data", flags=["--auth-tokens", str(tokens)])
    with server.start(), grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.StreamsServiceStub(channel)
        produce_ = calls(stub, "orders")["Produce"]
        assert code_of(produce_, bearer("old")) == grpc.StatusCode.OK
        assert code_of(produce_, bearer("new")) == grpc.StatusCode.UNAUTHENTICATED
        write_tokens(tokens, [{"token": "new", "spaces": ["orders"], "access": ["write"]}])
        server.send(signal.SIGHUP)
        wait_until(
            lambda: code_of(produce_, bearer("new")) == grpc.StatusCode.OK,
            what="the new token to work after SIGHUP",
        )
        assert code_of(produce_, bearer("old")) == grpc.StatusCode.UNAUTHENTICATED
        # A bad file on SIGHUP keeps the tokens in force.
        tokens.write_text('{"tokens": [{"token": "broken"')
        server.send(signal.SIGHUP)
        wait_until(lambda: "kept the previous tokens" in server.stderr(), what="the reload error")
        assert code_of(produce_, bearer("new")) == grpc.StatusCode.OK
        assert code_of(produce_, bearer("broken")) == grpc.StatusCode.UNAUTHENTICATED
        # The health service stays open to probes, which carry no token.
        assert health_status(channel, "") == SERVING
        assert server.proc is not None and server.proc.poll() is None
        assert server.stop() == 0


BAD_FILES = {
    "not-json": "{tokens: nope",
    "bad-access": json.dumps({"tokens": [{"token": "t", "spaces": ["*"], "access": ["admin"]}]}),
    "duplicate": json.dumps({"tokens": [{"token": "t", "spaces": ["*"], "access": ["read"]}] * 2}),
}


@pytest.mark.parametrize("content", [*BAD_FILES, "missing"])
def test_a_bad_token_file_at_start_exits_2_with_a_clear_message(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "tokens.json"
    if content != "missing":
        path.write_text(BAD_FILES[content])
    result = run_python(
        ["server.py", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "data"),
         "--auth-tokens", str(path)],
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "listening on" not in result.stdout
    assert "--auth-tokens" in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_an_empty_token_file_option_is_refused_at_start(tmp_path: Path, how: str) -> None:
    """An empty --auth-tokens used to turn authentication off, silently."""
    args = ["server.py", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "data")]
    if how == "flag":
        result = run_python([*args, "--auth-tokens", ""])
    else:
        result = run_python(args, env={"STREAMS_AUTH_TOKENS": ""})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "listening on" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert ("--auth-tokens" if how == "flag" else "STREAMS_AUTH_TOKENS") in lines[0]
    assert "empty" in lines[0]


# -- revocation: a reload ends the open streams it no longer allows ------------

QUICK = 8.0
READER = {"token": "reader", "spaces": ["orders*"], "access": ["read"]}
ADMIN = {"token": "admin", "spaces": ["*"], "access": ["read", "write"]}


async def _reload(server: InProcessServer) -> None:
    server.server.reload_auth()  # what SIGHUP runs, on the server's loop


@pytest.fixture
def reloadable(tmp_path: Path) -> Iterator[tuple[InProcessServer, Path]]:
    path = write_tokens(tmp_path / "tokens.json", [READER, ADMIN])
    with InProcessServer(tmp_path / "data", auth=TokenAuth.load(path)) as srv:
        produce(srv.stub, "orders", "s", [b"first"], call_metadata=bearer("admin"))
        yield srv, path


def follow(srv: InProcessServer, **request: Any) -> Any:
    """A follow stream of the reader token, once it has its first record."""
    stream = srv.stub.Consume(
        pb.ConsumeRequest(space="orders", follow=True, **request),
        metadata=bearer("reader"),
        timeout=QUICK,
    )
    assert [r.payload for r in next(stream).records] == [b"first"]
    return stream


@pytest.mark.parametrize(
    ("reader", "code", "words"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED, "revoked"),
        ({**READER, "spaces": ["billing"]}, grpc.StatusCode.PERMISSION_DENIED, "'orders'"),
        ({**READER, "access": ["write"]}, grpc.StatusCode.PERMISSION_DENIED, "read access"),
    ],
    ids=["token-removed", "space-removed", "read-removed"],
)
def test_a_reload_ends_open_streams_the_token_no_longer_allows(
    reloadable: tuple[InProcessServer, Path],
    reader: dict[str, Any] | None,
    code: grpc.StatusCode,
    words: str,
) -> None:
    """The stream waits for records when the reload comes: it ends at once with
    the status that says why (not at its deadline, not with a record)."""
    srv, path = reloadable
    waiting = follow(srv)
    segment = follow(srv, segment="s")
    write_tokens(path, [ADMIN] + ([reader] if reader else []))
    srv.run(_reload(srv))
    for stream in (waiting, segment):
        with pytest.raises(grpc.RpcError) as ended:
            got = next(stream)
            pytest.fail(f"a revoked stream went on: {got}")
        assert ended.value.code() == code, ended.value.details()
        assert words in (ended.value.details() or ""), ended.value.details()
        assert "reloaded" in (ended.value.details() or "")
    # Nothing is left registered, and new calls with the old grant are refused.
    assert srv.server.auth is not None and srv.server.auth.open_streams == 0
    produce(srv.stub, "orders", "s", [b"after"], call_metadata=bearer("admin"))
    refused = rpc_code(
        lambda: srv.stub.Peek(
            pb.PeekRequest(space="orders"), metadata=bearer("reader"), timeout=QUICK
        )
    )
    assert refused == code


def test_a_reload_that_still_allows_the_stream_keeps_it(
    reloadable: tuple[InProcessServer, Path],
) -> None:
    srv, path = reloadable
    stream = follow(srv)
    # Narrowed, but still covering what the stream reads.
    write_tokens(path, [ADMIN, {**READER, "spaces": ["orders"]}])
    srv.run(_reload(srv))
    produce(srv.stub, "orders", "s", [b"after"], call_metadata=bearer("admin"))
    assert [r.payload for r in next(stream).records] == [b"after"]
    # And a second reload that does revoke still ends it.
    write_tokens(path, [ADMIN])
    srv.run(_reload(srv))
    with pytest.raises(grpc.RpcError) as ended:
        next(stream)
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    stream.cancel()


def test_a_reload_ends_a_stream_that_is_busy_sending(
    reloadable: tuple[InProcessServer, Path],
) -> None:
    """Records keep coming while the token goes: no record produced after the
    reload reaches the stream, which ends PERMISSION_DENIED."""
    srv, path = reloadable
    stream = follow(srv, max_batch=1)
    for n in range(50):
        produce(srv.stub, "orders", "s", [f"before-{n}".encode()], call_metadata=bearer("admin"))
    next(stream)  # mid-way through the backlog, with more to send
    write_tokens(path, [ADMIN, {**READER, "spaces": ["billing"]}])
    srv.run(_reload(srv))
    produce(srv.stub, "orders", "s", [b"after"], call_metadata=bearer("admin"))
    seen = []
    with pytest.raises(grpc.RpcError) as ended:
        for response in stream:
            seen.extend(r.payload for r in response.records)
    assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED, ended.value.details()
    assert b"after" not in seen
