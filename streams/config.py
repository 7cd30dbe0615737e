"""Server options: each one a command-line flag and a ``STREAMS_*`` variable.

A flag wins over its environment variable, which wins over the default.
``python server.py --help`` lists every option with its default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from streams.limits import Limits

_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server needs to start."""

    listen: str = "127.0.0.1:50051"
    data: Path = Path("data")
    sync: bool = True
    dedupe_window_seconds: float = 24 * 3600.0
    dedupe_sweep_seconds: float = 60.0
    shutdown_grace_seconds: float = 10.0
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)


def _env(name: str) -> str:
    return "STREAMS_" + name.upper().replace("-", "_")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


class _Parser:
    """Adds options whose defaults come from the environment, named alike."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.environ = environ
        self.parser = argparse.ArgumentParser(
            prog="streams-server",
            description="Streams: an event-stream store served over gRPC, on RocksDB.",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )

    def add(self, flag: str, kind: type, default: object, text: str) -> None:
        env = _env(flag)
        raw = self.environ.get(env)
        try:
            value = default if raw is None else kind(raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            self.parser.error(f"{env}={raw!r}: {exc}")
        self.parser.add_argument(
            f"--{flag}",
            type=kind,
            default=value,
            metavar=kind.__name__.upper(),
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


def parse(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Builds a :class:`Config` from flags and environment.

    Example::

        config = parse(["--listen", "127.0.0.1:0", "--data", "/tmp/s"])
    """
    p = _Parser(dict(os.environ) if environ is None else environ)
    d = Config()
    p.add("listen", str, d.listen, "HOST:PORT to serve gRPC on; port 0 picks a free port.")
    p.add("data", Path, d.data, "Folder of the RocksDB database (created if missing).")
    p.add_switch(
        "no-sync",
        "Ack writes once they are in the write-ahead log without fsyncing it: much "
        "faster, and acknowledged records survive a crash of the server process, but "
        "a power loss or kernel crash can lose the last acknowledged writes (and "
        "offsets) of up to about a second.",
    )
    p.add(
        "dedupe-window-seconds",
        float,
        d.dedupe_window_seconds,
        "How long a transaction_id is remembered for deduplication.",
    )
    p.add(
        "dedupe-sweep-seconds",
        float,
        d.dedupe_sweep_seconds,
        "How often expired dedupe entries are deleted.",
    )
    p.add(
        "shutdown-grace-seconds",
        float,
        d.shutdown_grace_seconds,
        "How long in-flight calls may run on after SIGTERM/SIGINT.",
    )
    p.add("log-level", str, d.log_level, "debug, info, warning or error.")
    for limit in fields(Limits):
        p.add(
            limit.name.replace("_", "-"),
            int,
            getattr(_DEFAULT_LIMITS, limit.name),
            f"Limit: {limit.name.replace('_', ' ')}.",
        )
    args = p.parser.parse_args(argv)
    try:
        lim = Limits(**{limit.name: getattr(args, limit.name) for limit in fields(Limits)})
    except ValueError as exc:
        p.parser.error(str(exc))
    for name in ("dedupe_window_seconds", "dedupe_sweep_seconds"):
        if getattr(args, name) <= 0:
            p.parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.shutdown_grace_seconds < 0:
        p.parser.error("--shutdown-grace-seconds must not be negative")
    return Config(
        listen=args.listen,
        data=args.data,
        sync=not args.no_sync,
        dedupe_window_seconds=args.dedupe_window_seconds,
        dedupe_sweep_seconds=args.dedupe_sweep_seconds,
        shutdown_grace_seconds=args.shutdown_grace_seconds,
        log_level=args.log_level,
        limits=lim,
    )
