"""Consumer groups across kill -9 of the server (RocksDB), checked from the wire.

The randomized run of test_group_ordering.py (members joining, dying and
leaving; acks, nacks, timeouts) with the server killed with SIGKILL at random
moments and started again on its data (ServerProcess, as the crash suite
does); members join again after each start. On top of the ordering rules:

- nothing durably settled comes again: once a segment's next record was
  delivered, or GetGroup's acked_through covered a position, that record is
  never delivered again, in any later life of the server;
- everything not settled comes again: every record ends acked or parked, and
  a record is only settled by an ack or park nack sent in the server life of
  its last delivery (or by its last attempt);
- parked records are in the dead-letter segment exactly once.

``STREAMS_GROUP_CRASHES`` (default 3) kill -9 cycles, ``STREAMS_GROUP_RECORDS``
records, ``STREAMS_GROUP_SEED`` the seed (printed).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.group_checker import PER_SEGMENT
from tests.support.process import ServerProcess

from .group_workload import Plan, env_seed, run_plan
from .support import COUNTERS


def test_group_survives_kill_9(tmp_path: Path) -> None:
    seed = env_seed()
    plan = Plan.from_env(seed, ordering=PER_SEGMENT, records=1_500, segments=1_000, crashes=3)
    print(f"\ngroup crash run: STREAMS_GROUP_SEED={seed}")
    data = tmp_path / "data"
    data.mkdir()
    with ServerProcess(data, tmp_path / "server.log") as server:
        server.start()
        run = run_plan(server, plan, "orders", "workers")
        print(run.summary())
        if run.violations:
            folder = Path(os.environ.get("STREAMS_GROUP_TRACE_DIR", tmp_path))
            folder.mkdir(parents=True, exist_ok=True)
            trace = folder / f"group-crash-trace-{seed}.txt"
            trace.write_text("\n".join([*run.violations, "", *run.checker.trace]))
            print(f"violations and trace: {trace}")
        assert not run.violations, (
            f"STREAMS_GROUP_SEED={seed}: {len(run.violations)} violations:\n"
            + "\n".join(run.violations[:30])
            + f"\n{run.summary()}\nserver log tail:\n{server.stderr()[-3000:]}"
        )
    stats = run.checker.stats
    COUNTERS["groups kill -9: cycles"] = run.crashes
    COUNTERS["groups kill -9: durably settled records checked never to come again"] = stats[
        "durable at a kill"
    ]
    COUNTERS["groups kill -9: unsettled records that had to come again"] = stats[
        "unsettled at a kill"
    ]
    assert run.crashes == plan.crashes
    assert stats["durable at a kill"] > 0 and stats["unsettled at a kill"] > 0
