"""Power cuts under load on a ``--workers 2`` server: the writer's store is on
a filesystem that drops what was not fsynced (LazyFS, see test_power_loss.py),
producers, a committer and a follower take turns over both fronts, then the
writer is killed and the power cut. An ack comes back through a front only
after the writer's fsync: after every cut, every acknowledged transaction and
commit is there, and each unacknowledged one, retried, is written exactly once.
No front may outlive its writer (they hold no store files, but must not serve).

STREAMS_WORKERS_POWER_CYCLES (default 3: two cuts, one kill -9 alone) sets the number of cycles.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from tests.support.fronts import SpreadServer, fronts_of
from tests.support.waiting import wait_until

from .lazyfs import LazyFS
from .test_power_loss import (
    Figures,
    Load,
    check,
    lazyfs,  # noqa: F401 - the fixture
    restart_and_check,
    run_until_cut,
    servers,  # noqa: F401 - the fixture
)

WORKERS = 2
CYCLES = int(os.environ.get("STREAMS_WORKERS_POWER_CYCLES", "3"))
FRONT_EXIT_TIMEOUT = 10.0


def test_acknowledged_writes_survive_power_cuts_under_load_over_workers(
    lazyfs: LazyFS,  # noqa: F811 - the fixture imported above
    servers: list[SpreadServer],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    rng = random.Random(os.environ.get("POWER_LOSS_SEED", "16"))
    data = lazyfs.mount_point / "data"
    server = SpreadServer(data, tmp_path / "server.log", workers=WORKERS)
    servers.append(server)
    load = Load()
    figures = Figures()
    started = time.monotonic()
    server.start()
    for cycle in range(CYCLES):
        cut = lazyfs if cycle % 2 == 0 else None
        run_until_cut(server, load, rng, f"w{cycle}", cut, removals=cycle % 2 == 1)
        server.close_channel()
        wait_until(lambda: not fronts_of(data), FRONT_EXIT_TIMEOUT, "the fronts to exit")
        if cut is None:
            figures.process_kills += 1
        else:
            figures.power_cuts += 1
        restart_and_check(server, load, figures)
    report = check(server.stub, load)
    acked = sum(t.ack is not None for t in load.journal.txns.values())
    assert figures.power_cuts and figures.process_kills
    assert acked >= CYCLES * 10, "too few transactions to mean anything"
    assert load.follower.records, "the follower saw nothing"
    print(
        f"power cuts over --workers {WORKERS}: {figures.power_cuts} cuts and "
        f"{figures.process_kills} kill -9 of the writer in {time.monotonic() - started:.1f}s; "
        f"{acked} transactions acknowledged ({report.records} records), unacknowledged "
        f"retried: {figures.retried_there} stored, {figures.retried_written} written once"
    )
