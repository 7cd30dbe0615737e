"""Engine selection: --storage / STREAMS_STORAGE picks a backend from the
registry; the service and server know no engine by name; nothing under
streams/storage/ speaks gRPC or protobuf, and only the RocksDB package
loads rocksdict."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from streams import config
from streams.storage import registry
from streams.storage.backend import Setup
from streams.v1 import streams_pb2 as pb
from tests.support.process import REPO_ROOT, ServerProcess

from .conftest import txn

STORAGE = REPO_ROOT / "streams" / "storage"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize(
    "path", sorted(STORAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(STORAGE))
)
def test_storage_modules_import_no_transport_and_rocksdict_only_in_its_package(
    path: Path,
) -> None:
    modules = imported_modules(path)
    for module in modules:
        assert not module.startswith(("grpc", "google.protobuf", "streams.v1")), (path, module)
        assert module not in ("streams.service", "streams.server", "streams.status"), (path, module)
    if "rocksdb" not in path.relative_to(STORAGE).parts:
        assert not any(m.startswith("rocksdict") for m in modules), path


def test_the_service_and_the_server_load_no_engine() -> None:
    code = (
        "import sys, streams.service, streams.server, streams.config\n"
        "streams.config.parse(['--storage', 'memory'], environ={})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('rocksdict', 'streams.storage.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.strip()
    assert "rocksdict" not in loaded and "streams.storage.rocksdb.store" not in loaded, loaded


def test_storage_comes_from_the_flag_or_the_variable() -> None:
    assert config.parse([], environ={}).storage == "rocksdb"
    assert config.parse([], environ={"STREAMS_STORAGE": "memory"}).storage == "memory"
    assert config.parse(
        ["--storage", "rocksdb"], environ={"STREAMS_STORAGE": "memory"}
    ).storage == ("rocksdb")
    # A backend's own options are server options too, with their defaults.
    cfg = config.parse(["--memtable-bytes", "1048576"], environ={})
    assert registry.get("rocksdb").settings(cfg.storage_options) == {
        "memtable_bytes": 1 << 20,
        "wal_tail_damage": "refuse",
        "catalog_cache_bytes": 64 << 20,
        "dedupe_sweep_seconds": 60.0,
        "reclaim_seconds": 5.0,
        "merge_seconds": 1.0,
        "merge_small_bytes": 8 << 10,
        "merge_run_bytes": 64 << 10,
        "merge_min_chunks": 16,
        "merge_step_chunks": 512,
    }


def test_the_merge_options_reach_the_store_and_0_small_bytes_turns_merging_off(
    tmp_path: Path,
) -> None:
    argv = ["--merge-small-bytes", "0", "--merge-run-bytes", "1500", "--merge-min-chunks", "3"]
    cfg = config.parse(argv, environ={"STREAMS_MERGE_STEP_CHUNKS": "64"})
    rocksdb = registry.get("rocksdb")

    async def scenario() -> None:
        store = await rocksdb.open(Setup(tmp_path / "db", options=cfg.storage_options))
        shape = store._options
        assert (shape.merge_run_bytes, shape.merge_min_chunks, shape.merge_step_chunks) == (
            1500,
            3,
            64,
        )
        assert "merge" not in [task.name for task in store.background()]
        for _ in range(50):
            await store.produce(txn("s", ("a", 1)))
        assert await store.merge() == 0 and store.stats.merged_runs == 0
        await store.close()

    asyncio.run(scenario())


def test_a_merged_run_longer_than_a_step_is_refused_naming_the_option(tmp_path: Path) -> None:
    cfg = config.parse(["--merge-min-chunks", "600"], environ={})
    setup = Setup(tmp_path / "db", options=cfg.storage_options)
    with pytest.raises(config.OptionError, match="merge_step_chunks") as refused:
        asyncio.run(registry.get("rocksdb").open(setup))
    assert "--merge-min-chunks" in str(refused.value)


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        (["--storage", "nosuch"], {}, "--storage"),
        ([], {"STREAMS_STORAGE": "nosuch"}, "STREAMS_STORAGE"),
        (["--memtable-bytes", "0"], {}, "--memtable-bytes"),
        (["--merge-small-bytes", "-1"], {}, "--merge-small-bytes"),
        ([], {"STREAMS_MERGE_MIN_CHUNKS": "1"}, "STREAMS_MERGE_MIN_CHUNKS"),
        ([], {"STREAMS_DEDUPE_SWEEP_SECONDS": "-1"}, "STREAMS_DEDUPE_SWEEP_SECONDS"),
    ],
)
def test_a_bad_storage_option_is_a_usage_error_naming_it(
    argv: list[str], environ: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        config.parse(argv, environ=environ)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1, err


def test_a_server_on_memory_serves_and_writes_no_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "server.log", flags=["--storage", "memory"])
    with server.start():
        write = pb.SegmentWrite(segment="a", records=[pb.RecordInput(payload=b"x")])
        ack = server.stub.Produce(pb.ProduceRequest(space="s", writes=[write]))
        assert ack.last_position == 1
        (response,) = server.stub.Consume(pb.ConsumeRequest(space="s"))
        assert [r.payload for r in response.records] == [b"x"]
        assert server.stop() == 0
    assert not data.exists()
    # What it held is gone with it.
    with server.start():
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.Peek(pb.PeekRequest(space="s"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
