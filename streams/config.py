"""Server options: each one a command-line flag and a ``STREAMS_*`` variable.

A flag wins over its environment variable, which wins over the default.
``python server.py --help`` lists every option with its default. A bad value
ends the server at start with exit code 2 and one line naming the option and
the value; relative paths are taken from the directory the server was started
in.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from streams import limits, logs
from streams.limits import Limits
from streams.model import RetentionPolicy
from streams.storage import registry

_DEFAULT_LIMITS = Limits()

# Shorter intervals would keep the retention pass, which visits every space, always running.
MIN_RETENTION_INTERVAL = 0.01
# gRPC takes keepalive settings in whole milliseconds, and 0 would turn pinging off.
MIN_KEEPALIVE_SECONDS = 0.001
# --workers: past this many front processes the writer, which every one of them
# calls, is the bottleneck long before the cores are (and each costs ~60 MB).
MAX_WORKERS = 256


class OptionError(Exception):
    """An option whose value the server cannot start with (found once it tries:
    an address in use, an unusable data directory, an unreadable TLS file)."""

    def __init__(self, option: str, value: object, reason: str) -> None:
        super().__init__(f"{option} {str(value)!r}: {reason}")
        self.option = option


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server needs to start."""

    listen: str = "127.0.0.1:50051"
    data: Path = Path("data")
    storage: str = registry.DEFAULT
    # The options that storage backends own (see streams.storage.backend), by
    # dest name; a backend takes the defaults of those left out.
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    sync: bool = True
    dedupe_window_seconds: float = 24 * 3600.0
    shutdown_grace: float = 10.0
    slow_consumer_seconds: float = 10.0
    keepalive_seconds: float = 30.0
    keepalive_timeout_seconds: float = 10.0
    follow_linger_ms: float = 0.0
    log_level: str = "info"
    log_format: str = "text"
    metrics_listen: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_tokens: Path | None = None
    page_token_key: Path | None = None
    metrics_lag_series: int = 1000
    # How often the retention pass runs, and the policy of spaces without one.
    retention_interval: float = 60.0
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    limits: Limits = field(default_factory=Limits)
    # 1: one process; N >= 2: a writer process and N gRPC front processes (streams.workers).
    workers: int = 1
    # With --workers N >= 2: how long a front may take to serve (it imports grpc and
    # connects), to exit after SIGTERM beyond --shutdown-grace, to answer a scrape.
    front_start_seconds: float = 60.0
    front_exit_seconds: float = 5.0
    front_scrape_seconds: float = 5.0


def cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, within the cgroup's
    CPU quota (a container limited to 2 CPUs on a 64-core node has 2)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = count or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):  # no cgroup v2 here
        return count
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return count
    return max(1, min(count, math.ceil(int(quota) / int(period))))


def default_workers(memory_budget_bytes: int) -> int:
    """--workers 0 (the default): one front process per core (:func:`cores`),
    as many as the memory budget can give a share to (see :func:`parse`), at
    least 1."""
    return max(1, min(cores(), limits.most_workers(memory_budget_bytes), MAX_WORKERS))


def _env(name: str) -> str:
    return "STREAMS_" + name.upper().replace("-", "_")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


class _OneLineErrors(argparse.ArgumentParser):
    """A usage error is one line naming the option, not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


class _Parser:
    """Adds options whose defaults come from the environment, named alike."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.environ = environ
        self.parser = _OneLineErrors(
            prog="streams-server",
            description="Streams: an event-stream store served over gRPC.",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )

    def add(
        self,
        flag: str,
        kind: Callable[[str], Any],
        default: object,
        text: str,
        choices: Sequence[str] | None = None,
        metavar: str | None = None,
    ) -> None:
        env = _env(flag)
        raw = self.environ.get(env)
        try:
            value = default if raw is None else kind(raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            self.parser.error(f"{env}={raw!r}: {exc}")
        if choices is not None and value not in choices:
            self.parser.error(f"{env}={raw!r}: choose from {', '.join(choices)}")
        self.parser.add_argument(
            f"--{flag}",
            type=kind,
            default=value,
            choices=choices,
            metavar=metavar or (kind.__name__.upper() if choices is None else None),
            help=f"{text} [env {env}]",
        )

    def add_switch(self, flag: str, text: str) -> None:
        env = _env(flag)
        raw = self.environ.get(env, "")
        try:
            default = _parse_bool(raw)
        except argparse.ArgumentTypeError as exc:
            self.parser.error(f"{env}={raw!r}: {exc}")
        self.parser.add_argument(
            f"--{flag}", action="store_true", default=default, help=f"{text} [env {env}]"
        )


def address(text: str) -> str:
    """HOST:PORT as gRPC and the metrics endpoint take it: a port in 0-65535
    (0 picks a free one) after the last colon, a host before it, an IPv6
    address in brackets."""
    host, colon, port = text.rpartition(":")
    if not colon or not port:
        raise argparse.ArgumentTypeError(f"{text!r} has no port: write HOST:PORT")
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port {port!r} is not a number in 0-65535")
    if not host.strip("[]"):
        raise argparse.ArgumentTypeError(f"{text!r} has no host: write HOST:PORT")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise argparse.ArgumentTypeError(f"{text!r}: write an IPv6 host in brackets, [{host}]:PORT")
    return text


def _optional_address(text: str) -> str:
    return address(text) if text else ""


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _absolute(path: Path | None) -> Path | None:
    """Relative paths are the caller's: resolved once, against the directory the
    server was started in."""
    return None if path is None else path.absolute()


def seconds(text: str) -> float:
    """A duration option: decimal seconds, not negative (``0.5``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of seconds, 0 or more")
    return value


def workers(text: str) -> int:
    """--workers: a whole number in 0-MAX_WORKERS (0: one per core)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a number of processes in 1-{MAX_WORKERS} (0: one per core)"
        )
    return value


def count(text: str) -> int:
    """A count option: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    if value > limits.MAX_UINT64:
        raise argparse.ArgumentTypeError(f"{text!r} is over the largest ({limits.MAX_UINT64})")
    return value


def _token_file(text: str) -> Path:
    # Empty must not mean "no authentication": a template that renders an
    # unset secret as "" would silently open the server to everyone.
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "empty; name the token file, or leave the option unset to run without authentication"
        )
    return Path(text)


def parse(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Builds a :class:`Config` from flags and environment.

    Example::

        config = parse(["--listen", "127.0.0.1:0", "--data", "/tmp/s"])
    """
    p = _Parser(dict(os.environ) if environ is None else environ)
    d = Config()
    p.parser.add_argument(
        "--version",
        action="version",
        version=f"streams-server {importlib.metadata.version('streams')}",
        help="Print the version and exit.",
    )
    p.add(
        "listen",
        address,
        d.listen,
        "HOST:PORT to serve gRPC on; port 0 picks a free port.",
        metavar="HOST:PORT",
    )
    p.add("data", Path, d.data, "Folder of the stored data (created if missing).")
    backends = registry.backends()
    p.add(
        "storage",
        str,
        d.storage,
        "Storage backend: "
        + "; ".join(f"{name}: {backend.summary}" for name, backend in sorted(backends.items()))
        + ".",
        choices=sorted(backends),
    )
    p.add_switch(
        "no-sync",
        "Ack writes once they are in the write-ahead log, without fsyncing it: much "
        "faster. Acknowledged records and offsets survive a crash of the server "
        "process, but a power loss or kernel crash loses those the OS had not yet "
        "written back (typically the last few to 30 seconds).",
    )
    p.add(
        "dedupe-window-seconds",
        float,
        d.dedupe_window_seconds,
        "How long a transaction_id is remembered for deduplication.",
    )
    p.add(
        "workers",
        workers,
        0,
        "gRPC front processes sharing --listen (SO_REUSEPORT), beside one writer process that "
        "owns the store; 1: everything in one process; 0: one per core (as many as "
        "--memory-budget-bytes has a share for). "
        "--memory-budget-bytes is split among the writer and the fronts; connection and "
        "stream caps are per front.",
        metavar="N",
    )
    p.add(
        "front-start-seconds",
        seconds,
        d.front_start_seconds,
        "--workers N >= 2: how long the fronts may take to serve; past it the server stops "
        "(exit 1).",
    )
    p.add(
        "front-exit-seconds",
        seconds,
        d.front_exit_seconds,
        "--workers N >= 2: how long the fronts may take to exit after --shutdown-grace before "
        "those still there are killed (one budget for all fronts, counted from the SIGTERM "
        "they all get at once; must be positive).",
    )
    p.add(
        "front-scrape-seconds",
        seconds,
        d.front_scrape_seconds,
        "--workers N >= 2: how long a /metrics scrape waits for the fronts' series, all "
        "fronts together (one that has not answered by then is left out of that scrape).",
    )
    p.add(
        "shutdown-grace",
        float,
        d.shutdown_grace,
        "Seconds in-flight calls may run on after SIGTERM/SIGINT before they are cancelled.",
    )
    p.add(
        "slow-consumer-seconds",
        float,
        d.slow_consumer_seconds,
        "A client that does not take a response within this many seconds (its HTTP/2 "
        "window stays shut) has its connection closed, freeing what it holds.",
    )
    p.add(
        "keepalive-seconds",
        seconds,
        d.keepalive_seconds,
        "Ping a client's connection after this many seconds without traffic; with "
        "--keepalive-timeout-seconds, a dead client (its machine or network gone) is noticed, "
        "its streams end and its consumer-group records go to other members.",
        metavar="SECONDS",
    )
    p.add(
        "keepalive-timeout-seconds",
        seconds,
        d.keepalive_timeout_seconds,
        "Close a connection whose client does not answer a keepalive ping within this long.",
        metavar="SECONDS",
    )
    p.add(
        "follow-linger-ms",
        float,
        d.follow_linger_ms,
        "Under a high commit rate, wake followers at most once per this many ms, so "
        "each response carries several transactions (0: wake on every commit).",
    )
    p.add("log-level", str, d.log_level, "Least severe level logged.", logs.LEVELS)
    p.add(
        "log-format",
        str,
        d.log_format,
        "text, or json: one JSON object per line with request fields.",
        logs.FORMATS,
    )
    p.add(
        "metrics-listen",
        _optional_address,
        d.metrics_listen,
        "HOST:PORT serving Prometheus metrics at /metrics (and /healthz); empty: off.",
        metavar="HOST:PORT",
    )
    p.add(
        "metrics-lag-series",
        int,
        d.metrics_lag_series,
        "Most streams_consumer_lag series (one per committed offset, the first in consumer, "
        "space, segment order).",
    )
    p.add(
        "retention-interval",
        seconds,
        d.retention_interval,
        "Seconds between retention passes: a record past its space's retention policy is "
        "removed within this long.",
        metavar="SECONDS",
    )
    p.add(
        "retention-max-age",
        seconds,
        0.0,
        "Default policy (spaces without one of their own, see ConfigureSpace): remove "
        "records older than this many seconds; 0: keep them forever.",
        metavar="SECONDS",
    )
    p.add(
        "retention-max-records-per-segment",
        count,
        0,
        "Default policy: keep at most this many records per segment (the newest); 0: no limit.",
        metavar="COUNT",
    )
    p.add(
        "retention-max-bytes",
        count,
        0,
        "Default policy: keep at most this many bytes (payload and metadata) per space, "
        "removing its oldest records; 0: no limit.",
        metavar="BYTES",
    )
    for name, backend in sorted(backends.items()):
        for option in backend.options:
            p.add(option.name, option.kind, option.default, f"[{name} storage] {option.help}")
    p.add(
        "tls-cert",
        _optional_path,
        None,
        "PEM certificate chain: serve TLS (with --tls-key).",
        metavar="FILE",
    )
    p.add("tls-key", _optional_path, None, "PEM private key of --tls-cert.", metavar="FILE")
    p.add(
        "tls-client-ca",
        _optional_path,
        None,
        "PEM CA bundle: require client certificates signed by it (mutual TLS).",
        metavar="FILE",
    )
    p.add(
        "auth-tokens",
        _token_file,
        None,
        'JSON file {"tokens": [{"token", "spaces", "access"}]}: require bearer tokens '
        "(reloaded on SIGHUP). Unset: no authentication; empty: refused.",
        metavar="FILE",
    )
    p.add(
        "page-token-key",
        _optional_path,
        None,
        "File holding the secret (16+ bytes) that signs ListSpaces/ListSegments page "
        "tokens; give several servers behind one address the same one. Unset: a random "
        "key per process (page tokens from before a restart are refused).",
        metavar="FILE",
    )
    for limit in fields(Limits):
        p.add(
            limit.name.replace("_", "-"),
            int,
            getattr(_DEFAULT_LIMITS, limit.name),
            limit.metadata["help"],
        )
    args = p.parser.parse_args(argv)
    try:
        lim = Limits(**{limit.name: getattr(args, limit.name) for limit in fields(Limits)})
    except ValueError as exc:
        p.parser.error(str(exc))
    if args.dedupe_window_seconds <= 0:
        p.parser.error("--dedupe-window-seconds must be positive")
    if args.metrics_lag_series < 1:
        p.parser.error(f"--metrics-lag-series {args.metrics_lag_series}: must be positive")
    for flag in ("keepalive-seconds", "keepalive-timeout-seconds"):
        value = getattr(args, flag.replace("-", "_"))
        if value < MIN_KEEPALIVE_SECONDS:
            p.parser.error(f"--{flag} {value}: must be at least {MIN_KEEPALIVE_SECONDS} s")
    if args.follow_linger_ms < 0:
        p.parser.error("--follow-linger-ms must not be negative")
    if not args.slow_consumer_seconds > 0:
        p.parser.error("--slow-consumer-seconds must be positive")
    if not args.retention_interval >= MIN_RETENTION_INTERVAL:
        p.parser.error(
            f"--retention-interval {args.retention_interval}: must be at least "
            f"{MIN_RETENTION_INTERVAL} s (a pass scans every space)"
        )
    max_age_ns = round(args.retention_max_age * 1e9)
    if args.retention_max_age and not max_age_ns:
        # Rounded to 0 it would mean the opposite: keep records forever.
        p.parser.error(
            f"--retention-max-age {args.retention_max_age}: under a nanosecond "
            "(0 keeps records forever)"
        )
    if max_age_ns > limits.MAX_AGE_NS:
        p.parser.error(
            f"--retention-max-age {args.retention_max_age}: over the longest "
            f"({limits.MAX_AGE_NS // 10**9} seconds)"
        )
    if args.shutdown_grace < 0:
        p.parser.error("--shutdown-grace must not be negative")
    for flag in ("front-start-seconds", "front-exit-seconds", "front-scrape-seconds"):
        if not getattr(args, flag.replace("-", "_")) > 0:
            p.parser.error(f"--{flag} {getattr(args, flag.replace('-', '_'))}: must be positive")
    if args.workers == 0:
        args.workers = default_workers(lim.memory_budget_bytes)
    if args.workers > 1:
        # Each process must hold the largest response twice over, as the whole budget must.
        share = limits.process_share(lim.memory_budget_bytes, args.workers)
        if share < limits.MIN_MEMORY_BUDGET_BYTES:
            p.parser.error(
                f"--workers {args.workers}: --memory-budget-bytes {lim.memory_budget_bytes} "
                f"split among the writer and {args.workers} fronts leaves {share} bytes each, "
                f"under {limits.MIN_MEMORY_BUDGET_BYTES}; raise the budget or lower --workers"
            )
    if (args.tls_cert is None) != (args.tls_key is None):
        p.parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        p.parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    return Config(
        listen=args.listen,
        data=args.data.absolute(),
        storage=args.storage,
        storage_options={
            option.dest: getattr(args, option.dest)
            for backend in backends.values()
            for option in backend.options
        },
        sync=not args.no_sync,
        dedupe_window_seconds=args.dedupe_window_seconds,
        shutdown_grace=args.shutdown_grace,
        slow_consumer_seconds=args.slow_consumer_seconds,
        keepalive_seconds=args.keepalive_seconds,
        keepalive_timeout_seconds=args.keepalive_timeout_seconds,
        follow_linger_ms=args.follow_linger_ms,
        log_level=args.log_level,
        log_format=args.log_format,
        metrics_listen=args.metrics_listen,
        tls_cert=_absolute(args.tls_cert),
        tls_key=_absolute(args.tls_key),
        tls_client_ca=_absolute(args.tls_client_ca),
        auth_tokens=_absolute(args.auth_tokens),
        page_token_key=_absolute(args.page_token_key),
        metrics_lag_series=args.metrics_lag_series,
        retention_interval=args.retention_interval,
        retention=RetentionPolicy(
            max_age_ns, args.retention_max_records_per_segment, args.retention_max_bytes
        ),
        limits=lim,
        workers=args.workers,
        front_start_seconds=args.front_start_seconds,
        front_exit_seconds=args.front_exit_seconds,
        front_scrape_seconds=args.front_scrape_seconds,
    )
