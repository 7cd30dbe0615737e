"""The RocksDB engine stamps its on-disk format version and refuses a data
directory of a version it does not know: at start, with exit code 2 and one
line naming --data and the version, leaving the data as it is."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import rocksdict

from streams.storage.rocksdb import layout
from streams.storage.rocksdb.store import RocksStore
from tests.support.process import REPO_ROOT, clean_env

from .conftest import txn


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


def test_a_directory_from_before_versions_is_version_1_and_gets_stamped(tmp_path: Path) -> None:
    make_store(tmp_path / "data")
    set_version(tmp_path / "data", None)
    make_store(tmp_path / "data")  # opens, and writes on
    assert stored_version(tmp_path / "data") == layout.u64(1)


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
