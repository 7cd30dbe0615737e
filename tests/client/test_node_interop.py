"""A Node.js client built from the proto alone (tests/interop/node) against a live server.

The Node program runs every check itself and exits non-zero with ``MISMATCH: ...``
on the first wrong result. Without ``node`` the test skips, except in CI (the
``CI`` variable set), where node is expected and a missing one is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from streams import Client
from tests.support.process import REPO_ROOT, ServerProcess

from .conftest import unique

NODE_DIR = REPO_ROOT / "tests" / "interop" / "node"
PROGRAM = NODE_DIR / "interop.js"
# The backends that build the data lifecycle (Trim, WatchSegments) so far.
STORAGES = ("memory",)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        reason = "node is not on PATH: the Node.js interop test needs Node.js 18+"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: there it must run, not skip)")
        pytest.skip(reason)
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("node_modules is missing and npm is not on PATH: run npm ci in " +
                        str(NODE_DIR))  # fmt: skip
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       capture_output=True, timeout=300)  # fmt: skip
    return node


def run_node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_node(), str(PROGRAM), *args], capture_output=True, text=True, timeout=120,
        cwd=NODE_DIR,
    )  # fmt: skip


@pytest.mark.parametrize("storage", STORAGES)
def test_node_client_against_a_live_server(tmp_path: Path, storage: str) -> None:
    _node()  # skip (or fail in CI) before starting a server
    server = ServerProcess(tmp_path / "data", flags=["--storage", storage]).start()
    try:
        space = unique("node")
        result = run_node(server.target, space)
        assert result.returncode == 0, f"node interop failed:\n{result.stdout}\n{result.stderr}"
        assert result.stdout.strip().splitlines()[-1].startswith("interop ok: ")
        # What Node wrote reads back the same from Python: positions, payloads, the
        # child process's live records, the committed offsets; what it trimmed
        # (live 1-3) and deleted (audit) stays gone.
        with Client(server.target) as client:
            records = list(client.consume(space))
            assert [(r.position, r.segment, r.payload) for r in records] == [
                (1, "orders", b"order 1"),
                (2, "orders", b"\xff\x00\xfe"),
                (3, "orders", b"order 3"),
                (9, "live", b"live 4"),
                (10, "jobs-a", b"job a"),
                (11, "jobs-b", b"job b"),
            ]
            assert [s.name for s in client.list_segments(space)] == [
                "jobs-a", "jobs-b", "live", "orders"]  # fmt: skip
            assert records[0].metadata == {"type": "created", "": "empty key"}
            assert client.get_offset("node", space) == 4
            assert client.get_offset("node", space, "orders") == 2
            # The group Node made: both jobs settled (one acked, one nacked then
            # acked), nothing parked, and its member gone with its stream.
            info = client.get_group(space, "node")
            assert (info.group.from_end, info.group.max_attempts) == (True, 3)
            assert (info.acked_through, info.in_flight, info.parked, info.members) == (11, 0, 0, ())
        # The program does check: run again on the same space, every number is off.
        rerun = run_node(server.target, space)
        assert rerun.returncode == 1
        assert "MISMATCH: " in rerun.stderr
    finally:
        server.stop()
