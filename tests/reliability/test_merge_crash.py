"""Crashes and power cuts while the RocksDB engine merges small chunks.

The kill -9 cycles of test_crash and the power cuts with removals of
test_power_loss, run again with the merge task every 20 ms instead of every
second, so that kills and cuts land while runs are written, next to trims,
deletes and retries: every check of those suites holds (acked records kept,
the space read equal to its segment reads merged, removals never undone).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import rocksdict

from streams.storage.rocksdb import layout as keys
from tests.support.process import ServerProcess

from . import test_crash, test_power_loss
from .lazyfs import LazyFS
from .test_power_loss import lazyfs, servers  # noqa: F401 (fixtures)

MERGING = ("--merge-seconds", "0.02", "--merge-small-bytes", "8192")


def merging_server(data: Path, log_path: Path | None = None, **options: Any) -> ServerProcess:
    """A ServerProcess as the suites start it, merging every 20 ms."""
    flags = (*options.pop("flags", ()), *MERGING)
    return ServerProcess(data, log_path, flags=flags, **options)


def test_kill9_cycles_while_merging_keep_every_acked_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(test_crash, "ServerProcess", merging_server)
    test_crash.test_kill9_cycles_keep_every_acked_transaction(tmp_path)
    assert merged_runs(tmp_path / "data") > 0, "no merged run was ever written"


def merged_runs(data: Path) -> int:
    """The merged runs stored under ``data`` (opened read-only)."""
    db = rocksdict.Rdict(
        str(data),
        rocksdict.Options(raw_mode=True),
        access_type=rocksdict.AccessType.read_only(),
    )
    try:
        found = db.keys(from_key=keys.MERGED)
        return sum(1 for _ in itertools.takewhile(lambda key: key[:1] == keys.MERGED, found))
    finally:
        db.close()


def test_power_cuts_while_merging_keep_acked_writes_and_removals(
    lazyfs: LazyFS,  # noqa: F811 (the fixture)
    servers: list[ServerProcess],  # noqa: F811 (the fixture)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(test_power_loss, "ServerProcess", merging_server)
    test_power_loss.test_trims_and_deletes_survive_power_cuts_under_load(lazyfs, servers, tmp_path)
