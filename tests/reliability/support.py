"""Shared helpers for the reliability suites (fuzz, disk full, soak).

The server always runs as a subprocess (tests/support/process.py): grpc and
fork do not mix, and a crash must not take the test process with it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc

__all__ = [
    "CONTRACT_CODES",
    "COUNTERS",
    "bytes_field",
    "list_all_spaces",
    "need_root_feature",
    "rss_kib",
    "tmpfs",
    "varint",
    "varint_field",
]

SERVICE = "/streams.v1.StreamsService/"

# Every status the contract names. UNAVAILABLE is only for a server that is
# shutting down (or has stopped writes), so the suites that expect a healthy
# server leave it out themselves.
CONTRACT_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    }
)

# Figures the suites report at the end of the run (see conftest.py).
COUNTERS: dict[str, object] = {}


def count(key: str, n: int = 1) -> None:
    """Adds ``n`` to the integer counter ``key``."""
    COUNTERS[key] = int(COUNTERS.get(key, 0)) + n  # type: ignore[call-overload]


def rss_kib(pid: int) -> int:
    """The resident set size of ``pid`` in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def list_all_spaces(stub: pb_grpc.StreamsServiceStub) -> dict[str, int]:
    """Every space with its last position, through every page of ListSpaces."""
    spaces: dict[str, int] = {}
    token = ""
    while True:
        page = stub.ListSpaces(pb.ListSpacesRequest(page_size=1000, page_token=token), timeout=30)
        spaces.update((s.name, s.last_position) for s in page.spaces)
        token = page.next_page_token
        if not token:
            return spaces


def need_root_feature(reason: str) -> None:
    """Skips with ``reason``, or fails when the environment variable CI is set:
    in CI the suite must really run, not quietly skip."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so this may not skip: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """Mounts a tmpfs of ``size`` (``64m``) on ``directory`` for the block's duration."""
    if os.geteuid() != 0:
        need_root_feature("mounting a tmpfs needs root (run the suite as root)")
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        need_root_feature(f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> int:
    """Writes a filler file at ``path`` until only ``leave`` bytes stay free;
    returns its size."""
    chunk = b"\xa5" * (1 << 20)
    total = 0
    with open(path, "wb") as f:
        while True:
            room = free_bytes(path.parent) - leave
            if room <= 0:
                break
            try:
                total += f.write(chunk[: min(room, len(chunk))])
                f.flush()
            except OSError:
                break
    return total


# -- protobuf wire format, built by hand -----------------------------------


def varint(n: int) -> bytes:
    """A base-128 varint (``n`` >= 0; wider than 64 bits on purpose is allowed)."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def varint_field(field: int, n: int) -> bytes:
    return key(field, 0) + varint(n)


def bytes_field(field: int, data: bytes) -> bytes:
    """A length-delimited field (string, bytes or sub-message)."""
    return key(field, 2) + varint(len(data)) + data
