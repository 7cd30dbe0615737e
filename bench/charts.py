"""PNG charts of a suite run (``suite.Report.data``), each figure beside its limit.

charts.draw(report.data, Path("bench-results"))  # -> the paths written
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen
from matplotlib.axes import Axes
from matplotlib.figure import Figure

Data = dict[str, Any]


def draw(data: Data, out: Path) -> list[Path]:
    """Draws a chart per section present in ``data``; returns the files written."""
    written = []
    for name, chart in (
        ("produce", _produce),
        ("consume", _consume),
        ("follow", _follow),
        ("growth", _growth),
        ("segments", _segments),
    ):
        if data.get(name):
            figure = chart(data)
            path = out / f"{name}.png"
            figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(figure)
            written.append(path)
    return written


def _style(axes: Axes, title: str, xlabel: str, ylabel: str) -> None:
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")


def _produce(data: Data) -> Figure:
    entries = data["produce"]
    producers = sorted({e["producers"] for e in entries})
    figure, panes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for axes, key, title in ((panes[0], "durable", "durable"), (panes[1], "no_sync", "--no-sync")):
        for i, p in enumerate(producers):
            rows = sorted((e for e in entries if e["producers"] == p), key=lambda e: e["per_call"])
            x = [e["per_call"] for e in rows]
            color = f"C{i}"
            axes.plot(x, [e[key] for e in rows], "o-", color=color, label=f"{p} producer(s)")
            axes.plot(x, [e["bare"] for e in rows], "--", color=color, label=f"bare gRPC, {p}")
        rows = [e for e in entries if e["producers"] == producers[0]]
        rows.sort(key=lambda e: e["per_call"])
        raw = "raw_off" if key == "no_sync" else "raw_sync"
        label = "raw rocksdict, sync off" if key == "no_sync" else "raw rocksdict, sync=True"
        axes.plot([e["per_call"] for e in rows], [e[raw] for e in rows], ":k", label=label)
        axes.set_xscale("log")
        axes.set_yscale("log")
        _style(axes, f"Produce, {title}", "records per call", "records/s")
    return figure


def _consume(data: Data) -> Figure:
    entries = data["consume"]
    figure, axes = plt.subplots(figsize=(8, 4.5))
    labels = [f"{e['kind']}\n{e['size']:,}" for e in entries]
    width = 0.27
    for i, (key, label) in enumerate(
        (("server", "Streams"), ("bare", "bare gRPC stream"), ("raw", "raw rocksdict scan"))
    ):
        positions = [j + (i - 1) * width for j in range(len(entries))]
        axes.bar(positions, [e[key] for e in entries], width, label=label)
    axes.set_xticks(range(len(entries)), labels)
    _style(axes, "Consume to the end", "target, records", "records/s")
    return figure


def _follow(data: Data) -> Figure:
    entries = data["follow"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    x = [e["followers"] for e in entries]
    axes.plot(x, [e["p50"] for e in entries], "o-", label="Streams p50")
    axes.plot(x, [e["p99"] for e in entries], "s-", label="Streams p99")
    axes.plot(x, [e["bare_p50"] for e in entries], "--k", label="bare gRPC unary p50")
    axes.set_xscale("log")
    axes.set_yscale("log")
    _style(axes, "Produce-to-follower latency", "followers", "ms")
    return figure


def _growth(data: Data) -> Figure:
    entries = data["growth"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    x = [e["size"] for e in entries]
    axes.plot(x, [e["server"] for e in entries], "o-", label="Streams")
    axes.plot(x, [e["bare"] for e in entries], "--", label="bare gRPC stream")
    axes.plot(x, [e["raw"] for e in entries], ":", label="raw rocksdict scan")
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    _style(axes, "Consume rate as a segment grows", "records in the segment", "records/s")
    return figure


def _segments(data: Data) -> Figure:
    entries = data["segments"]
    x = [e["segments"] for e in entries]
    figure, (peek, start) = plt.subplots(1, 2, figsize=(12, 4.5))
    peek.plot(x, [e["peek_p50"] for e in entries], "o-", label="Peek p50")
    peek.plot(x, [e["peek_p99"] for e in entries], "s-", label="Peek p99")
    peek.plot(x, [e["bare_p50"] for e in entries], "--k", label="bare gRPC unary p50")
    peek.set_xscale("log")
    peek.set_ylim(bottom=0)
    _style(peek, "Peek latency", "segments", "ms")
    start.plot(x, [e["restart_s"] for e in entries], "o-", label="start-up s (restart)")
    start.plot(x, [e["first_s"] for e in entries], "^:", label="first start after writes s")
    tenfold = data.get("segments_tenfold")
    if tenfold:
        start.plot(
            [tenfold["segments"]],
            [tenfold["restart_s"]],
            "r*",
            markersize=12,
            label=f"{tenfold['records']:,} records (10x), restart s",
        )
    start.set_xscale("log")
    start.set_ylim(bottom=0)
    _style(start, "Start-up and memory", "segments (1 record each)", "seconds")
    memory = start.twinx()
    memory.plot(x, [e["rss_mb"] for e in entries], "d--", color="C3", label="RSS MiB")
    memory.set_ylabel("RSS MiB after start")
    memory.set_ylim(bottom=0)
    memory.legend(fontsize="small", loc="lower right")
    return figure
