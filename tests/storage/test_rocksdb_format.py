"""The RocksDB engine stamps its on-disk format version and refuses a data
directory of a version it does not know: at start, with exit code 2 and one
line naming --data and the version, leaving the data as it is."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import rocksdict

from streams.model import Cut, Target
from streams.storage.rocksdb import layout
from streams.storage.rocksdb.store import RocksStore
from tests.support.process import REPO_ROOT, clean_env

from .conftest import txn

# The last commit that writes on-disk format 1.
V1_COMMIT = "cd902dd"
CUT = Cut(100, 1 << 20)


def make_store(path: Path) -> None:
    async def fill() -> None:
        store = RocksStore.open(path)
        await store.produce(txn("s", ("a", 1)))
        await store.close()

    asyncio.run(fill())


def stored_version(path: Path) -> bytes | None:
    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
    try:
        return db.get(layout.FORMAT)
    finally:
        db.close()


def set_version(path: Path, raw: bytes | None) -> None:
    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
    try:
        if raw is None:
            del db[layout.FORMAT]
        else:
            db[layout.FORMAT] = raw
        db.flush_wal(True)
    finally:
        db.close()


def test_a_new_data_directory_is_stamped_with_the_current_version(tmp_path: Path) -> None:
    make_store(tmp_path / "data")
    assert stored_version(tmp_path / "data") == layout.u64(layout.FORMAT_VERSION)


V1_WRITER = """
import asyncio, sys
from pathlib import Path
import streams
from streams.model import SegmentAppend, Target, Transaction
from streams.storage.rocksdb.store import RocksStore

assert streams.__file__.startswith(sys.argv[2]), streams.__file__

def write(space, *appends):
    return Transaction(space, tuple(SegmentAppend(n, b, None) for n, b in appends), "", b"")

async def main():
    store = RocksStore.open(Path(sys.argv[1]))
    await store.produce(write("s", ("a", (b"\\x0a\\x01A", b"\\x0a\\x02AA")), ("b", (b"",))))
    await store.produce(write("s", ("a", (b"\\x0a\\x03AAA",))))
    await store.produce(write("t", ("c", (b"\\x0a\\x01m",))))
    await store.commit_offset("k", Target("s", "a"), 2, None)
    await store.commit_offset("k", Target("s"), 3, None)
    await store.commit_offset("k", Target("t", "c"), 1, None)
    await store.close()

asyncio.run(main())
"""


def write_with_v1_code(tmp_path: Path, data: Path, remove_version: bool) -> None:
    """A store written by the code of cd902dd (on-disk format 1), run from an
    export of that commit; without its V key when ``remove_version`` (as
    written before versions were stored)."""
    source = tmp_path / "v1-code"
    source.mkdir()
    archive = subprocess.run(
        ["git", "archive", V1_COMMIT, "streams"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    subprocess.run(
        [sys.executable, "-c", V1_WRITER, str(data), str(source)],
        cwd=source,
        env=clean_env({"PYTHONPATH": str(source)}),
        check=True,
        timeout=60,
    )
    assert stored_version(data) == layout.u64(1)
    if remove_version:
        set_version(data, None)


@pytest.mark.parametrize("remove_version", [False, True], ids=["stamped-1", "unstamped"])
def test_a_version_1_directory_is_migrated_once_with_its_numbers_and_offsets(
    tmp_path: Path, remove_version: bool, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    write_with_v1_code(tmp_path, data, remove_version)
    caplog.set_level(logging.WARNING, logger="streams.storage.rocksdb.migrate")

    async def check() -> None:
        store = RocksStore.open(data)
        space = await store.get_space("s")
        assert space is not None
        # Bodies of 3, 4, 0 and 5 bytes: what record_bytes counts.
        assert (space.last_position, space.first_position, space.record_count, space.bytes) == (
            4,
            1,
            4,
            12,
        )
        infos = {i.name: i for i in await store.list_segments("s", None, 10)}
        assert {n: (i.first_sequence, i.record_count, i.bytes) for n, i in infos.items()} == {
            "a": (1, 3, 12),
            "b": (1, 1, 0),
        }
        assert [r.body for r in (await store.read(Target("s", "a"), 1, 9, CUT))[0].records()] == [
            b"\x0a\x01A",
            b"\x0a\x02AA",
            b"\x0a\x03AAA",
        ]
        # The offsets were indexed: deletes find them.
        await store.delete_segment("s", "a", None)
        assert await store.get_offset("k", Target("s", "a")) is None
        assert await store.get_offset("k", Target("s")) == 3
        await store.delete_space("s")
        assert await store.get_offset("k", Target("s")) is None
        assert await store.get_offset("k", Target("t", "c")) == 1
        trimmed = await store.trim(Target("t"), 2)
        assert trimmed[0] == 2 and trimmed[1].bytes == 3
        await store.close()

    asyncio.run(check())
    assert stored_version(data) == layout.u64(2)
    (started, done) = [r.getMessage() for r in caplog.records]
    assert "from on-disk format 1 to 2" in started and "2 spaces, 5 records read" in done
    caplog.clear()
    make_store(data)  # a second open migrates nothing
    assert not caplog.records


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (layout.u64(layout.FORMAT_VERSION + 1), f"{layout.FORMAT_VERSION + 1} (written by a newer"),
        (layout.u64(0), "version 0;"),
        (b"\x01", "not a version number"),
    ],
    ids=["newer", "zero", "garbage"],
)
def test_an_unknown_version_is_refused_at_start_in_one_line(
    tmp_path: Path, raw: bytes, shown: str
) -> None:
    data = tmp_path / "data"
    make_store(data)
    set_version(data, raw)
    with pytest.raises(layout.UnknownFormat, match="on-disk format"):
        RocksStore.open(data)
    result = subprocess.run(
        [sys.executable, "server.py", "--listen", "127.0.0.1:0", "--data", str(data)],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert "--data" in line and str(data) in line and shown in line, line
    assert "listening on" not in result.stdout
    # The data was left as it is.
    assert stored_version(data) == raw
