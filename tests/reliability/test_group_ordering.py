"""Consumer groups under a randomized run, checked from the wire.

Up to 8 members (raw generated stubs, no client library) join, consume, ack,
nack (retry and park), let deliveries time out (a short ack_timeout), answer
for records they do not hold, and die mid-record or leave, while producers
write over 1,000 segments; see group_workload.py for the run and
tests/support/group_checker.py for every rule checked.

CI runs a short run per ordering; longer ones:
``STREAMS_GROUP_RECORDS=100000 STREAMS_GROUP_SEED=123 pytest
tests/reliability/test_group_ordering.py``; ``STREAMS_GROUP_STORAGE=memory``
runs it on the memory backend; ``STREAMS_GROUP_SERVER_FLAGS`` adds server
options (``--max-group-unsettled-records 20 --max-group-lead 100``). The
seed is printed (and kept in the failure message).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.group_checker import NONE, PER_SEGMENT
from tests.support.process import ServerProcess

from .group_workload import Plan, env_seed, run_plan
from .support import COUNTERS


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    data = tmp_path / "data"
    data.mkdir()
    flags = ["--storage", os.environ.get("STREAMS_GROUP_STORAGE", "rocksdb")]
    flags += shlex.split(os.environ.get("STREAMS_GROUP_SERVER_FLAGS", ""))
    with ServerProcess(data, tmp_path / "server.log", flags=flags) as server:
        server.start()
        yield server


@pytest.mark.parametrize(
    ("ordering", "records", "segments"),
    [(PER_SEGMENT, 3_000, 1_000), (NONE, 1_000, 100)],
)
def test_randomized_group_run(
    server: ServerProcess, ordering: str, records: int, segments: int
) -> None:
    seed = env_seed()
    plan = Plan.from_env(seed, ordering=ordering, records=records, segments=segments)
    print(f"\ngroup run ({ordering}): STREAMS_GROUP_SEED={seed}")
    run = run_plan(server, plan, "orders", "workers")
    print(run.summary())
    COUNTERS[f"groups {ordering}: deliveries checked"] = run.checker.stats["deliveries"]
    if run.violations:
        folder = Path(os.environ.get("STREAMS_GROUP_TRACE_DIR", server.log_path.parent))
        folder.mkdir(parents=True, exist_ok=True)
        trace = folder / f"group-trace-{ordering}-{seed}.txt"
        trace.write_text("\n".join([*run.violations, "", *run.checker.trace]))
        print(f"violations and trace: {trace}")
    assert not run.violations, (
        f"STREAMS_GROUP_SEED={seed} ({ordering}): {len(run.violations)} violations:\n"
        + "\n".join(run.violations[:30])
        + f"\n{run.summary()}\nserver log tail:\n{server.stderr()[-3000:]}"
    )
    stats = run.checker.stats
    # The run exercised what it claims to.
    assert stats["redeliveries"] > 0 and stats["nacks retry"] > 0 and stats["nacks park"] > 0
    assert run.kills > 0 and run.leaves > 0 and stats["stray answers"] > 0
    assert run.parked, "nothing was parked"
    if ordering == PER_SEGMENT:
        assert stats["obligations"] > 0 and stats["moves"] > 0
