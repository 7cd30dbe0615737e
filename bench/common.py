"""Helpers shared by the benchmarks: the server subprocess, percentiles, tables.

The benchmarks run as scripts (``python bench/core.py``), so this module is
imported as ``common``; helper processes are started with the ``spawn``
context (grpc and fork do not mix) and import it the same way.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_LISTENING = re.compile(r"listening on (\S+):(\d+)")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcessSample:
    """CPU seconds and memory of a process at one moment."""

    cpu_s: float
    rss_mb: float
    peak_rss_mb: float


def sample_process(pid: int) -> ProcessSample:
    """Reads /proc: user+system CPU time, current and peak resident memory."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields_ = handle.read().rsplit(")", 1)[1].split()
    cpu = (int(fields_[11]) + int(fields_[12])) / _CLOCK_TICKS
    rss = peak = 0.0
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return ProcessSample(cpu, rss, peak)


def descendants(pid: int) -> list[int]:
    """The process ids of ``pid``'s children, their children and so on."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children", encoding="ascii") as handle:
                    children = [int(c) for c in handle.read().split()]
                found += children
                pending += children
    return found


def sample_tree(pid: int) -> ProcessSample:
    """``sample_process`` summed over ``pid`` and its descendants (a server with
    --workers N is a writer and N front processes): one that exits meanwhile
    is left out."""
    total = sample_process(pid)
    for child in descendants(pid):
        with contextlib.suppress(OSError, ValueError):
            part = sample_process(child)
            total = ProcessSample(
                total.cpu_s + part.cpu_s,
                total.rss_mb + part.rss_mb,
                total.peak_rss_mb + part.peak_rss_mb,
            )
    return total


def machine_cpu() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine so far (all cores)."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / _CLOCK_TICKS, total / _CLOCK_TICKS


def wait_for_quiet(max_wait: float = 30.0, threshold: float = 0.15) -> float:
    """Waits (up to ``max_wait`` s) for a second in which the machine is under
    ``threshold`` busy, so that other work does not skew the figures; returns
    the busy share of the last second measured. Warns when it never got quiet."""
    deadline = time.monotonic() + max_wait
    while True:
        busy_before, total_before = machine_cpu()
        time.sleep(1.0)
        busy_after, total_after = machine_cpu()
        share = (busy_after - busy_before) / max(total_after - total_before, 1e-9)
        if share < threshold:
            return share
        if time.monotonic() >= deadline:
            print(
                f"warning: the machine is {share:.0%} busy with other work: figures will be low",
                file=sys.stderr,
            )
            return share


@dataclass
class Server:
    """A running ``server.py`` subprocess; its stderr goes to ``log_path``."""

    process: subprocess.Popen[str]
    address: str
    log_path: Path
    data: Path

    def sample(self) -> ProcessSample:
        """CPU and memory of the server's processes together (peak: the sum of
        each one's peak)."""
        return sample_tree(self.process.pid)

    def log_problems(self) -> list[str]:
        """Lines of the server's log that look like trouble."""
        return log_problems(self.log_path)


def log_problems(
    path: Path, marks: Sequence[str] = ("ERROR", "WARNING", "Traceback", "CRITICAL")
) -> list[str]:
    """Lines of a log file that contain one of ``marks``."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line for line in text.splitlines() if any(m in line for m in marks)]


def _read_lines(stream: Iterable[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@contextlib.contextmanager
def run_server(
    *,
    sync: bool = True,
    extra: Sequence[str] = (),
    start_timeout: float = 30.0,
    data: Path | None = None,
    workers: int | None = None,
) -> Iterator[Server]:
    """Starts ``server.py`` on 127.0.0.1 with a fresh data folder (or ``data``,
    kept as it is), stops it after. ``workers``: its ``--workers`` (None: the
    server's default).

    Example::

        with run_server(sync=False) as server:
            channel = grpc.insecure_channel(server.address)
    """
    with tempfile.TemporaryDirectory(prefix="streams-bench-") as tmp:
        data = data or Path(tmp) / "data"
        command = [sys.executable, "server.py", "--listen", "127.0.0.1:0", "--data", str(data)]
        if not sync:
            command.append("--no-sync")
        if workers is not None:
            command += ["--workers", str(workers)]
        command.extend(extra)
        with run_listening(command, Path(tmp) / "server.log", start_timeout) as (process, address):
            yield Server(process, address, Path(tmp) / "server.log", data)


@contextlib.contextmanager
def run_listening(
    command: Sequence[str], log_path: Path, start_timeout: float = 30.0
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Runs ``command`` (from the repo root) until it prints ``listening on
    HOST:PORT``; yields the process and that address, stops it after with
    SIGTERM. Its stderr goes to ``log_path``; error lines are shown at the end."""
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            list(command), cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True
        )
    try:
        yield process, _wait_listening(process, start_timeout)
    finally:
        _stop(process)
        problems = log_problems(log_path, ("ERROR", "Traceback", "CRITICAL"))
        if problems:
            print(
                f"{Path(command[1]).name} log had {len(problems)} error line(s), first ones:",
                file=sys.stderr,
            )
            for line in problems[:10]:
                print("  " + line, file=sys.stderr)


def _wait_listening(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise RuntimeError(f"server exited with {process.wait()} before listening")
        match = _LISTENING.search(line)
        if match:
            return f"{match.group(1)}:{match.group(2)}"
    raise RuntimeError(f"server did not print 'listening on' within {timeout:.0f}s")


def _stop(process: subprocess.Popen[str], grace: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        print(f"server did not stop within {grace:.0f}s of SIGTERM: killing it", file=sys.stderr)
        process.kill()
        process.wait(timeout=grace)


def load_note() -> str:
    """The machine's load right now, for the report: the 1-minute load average
    and the busy share of all cores over the last second (after waiting up to
    30 s for it to drop under 15 %)."""
    busy = wait_for_quiet()
    return f"load average {os.getloadavg()[0]:.2f}, {busy:.0%} busy"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (``fraction`` in 0..1); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Histogram:
    """Log-bucketed latencies (about 1 % wide) that merge across processes cheaply."""

    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    maximum: float = 0.0

    _BASE = math.log(1.01)

    def add(self, value_us: float) -> None:
        bucket = int(math.log(max(value_us, 1.0)) / self._BASE)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.total += 1
        self.maximum = max(self.maximum, value_us)

    def merge(self, other: Histogram) -> None:
        for bucket, count in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + count
        self.total += other.total
        self.maximum = max(self.maximum, other.maximum)

    def percentile(self, fraction: float) -> float:
        """The upper edge of the bucket holding the nearest-rank percentile (µs)."""
        if not self.total:
            return math.nan
        rank = max(1, math.ceil(fraction * self.total))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(math.exp((bucket + 1) * self._BASE), self.maximum)
        return self.maximum


def fmt(value: float, digits: int = 0) -> str:
    """A number for a table: thousands separators, ``-`` for NaN."""
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def ratio(value: float, limit: float) -> str:
    if not limit or math.isnan(value) or math.isnan(limit):
        return "-"
    return f"{value / limit:.2f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table, columns padded so it also reads well as plain text."""
    body = [list(map(str, row)) for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    separator = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(headers), separator, *(line(r) for r in body)])
