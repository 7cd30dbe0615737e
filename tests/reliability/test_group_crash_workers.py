"""Consumer groups across kill -9 of the writer of a ``--workers 2`` server.

The run of test_group_crash.py (members joining, dying and leaving; acks,
nacks, timeouts; kill -9 at random moments, members joining again after each
start) where every group RPC goes through a front, which forwards it to the
writer's registry (streams/workers/proxy.py): the writer's kill ends the
fronts and their forwarded streams, and the ordering and settling rules of
tests/support/group_checker.py hold across every life. No front may outlive
the run.

``STREAMS_GROUP_CRASHES`` (default 3), ``STREAMS_GROUP_RECORDS`` (default 600),
``STREAMS_GROUP_SEED`` as in test_group_crash.py.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.fronts import fronts_of
from tests.support.group_checker import PER_SEGMENT
from tests.support.process import ServerProcess
from tests.support.waiting import wait_until

from .group_workload import Plan, env_seed, run_plan
from .support import COUNTERS

WORKERS = 2


def test_group_survives_kill_9_of_the_writer(tmp_path: Path) -> None:
    seed = env_seed()
    plan = Plan.from_env(seed, ordering=PER_SEGMENT, records=600, segments=300, crashes=3)
    print(f"\ngroup crash run over --workers {WORKERS}: STREAMS_GROUP_SEED={seed}")
    data = tmp_path / "data"
    data.mkdir()
    with ServerProcess(data, tmp_path / "server.log", workers=WORKERS) as server:
        server.start()
        run = run_plan(server, plan, "orders", "workers")
        print(run.summary())
        assert not run.violations, (
            f"STREAMS_GROUP_SEED={seed}: {len(run.violations)} violations:\n"
            + "\n".join(run.violations[:30])
            + f"\n{run.summary()}\nserver log tail:\n{server.stderr()[-3000:]}"
        )
        assert server.stop() == 0
    wait_until(lambda: not fronts_of(data), 10.0, "every front to exit")
    stats = run.checker.stats
    COUNTERS[f"groups kill -9 over --workers {WORKERS}: cycles"] = run.crashes
    assert run.crashes == plan.crashes
    assert stats["durable at a kill"] > 0 and stats["unsettled at a kill"] > 0
