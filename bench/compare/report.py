"""From rounds of timings to the summary table, the targets, the results JSON and the chart.

Every ratio is taken within a round (both sides measured minutes apart at most, under the same load
from other work on the machine), then the median over the rounds is reported; msg/s and client CPU
per message are medians over the rounds too. Client CPU is this process's CPU time (all threads,
publisher and consumer alike, not the broker's) per message: other work on the machine slows the
wall clock, much less the CPU a case needs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .common import Case, Timing

#: The timing of each case in one round, by (flow, case name).
Round = dict[tuple[str, str], Timing]

PACKAGES = ("eventbus", "pika", "kombu", "faststream", "aio-pika", "dramatiq", "pydantic", "boto3", "moto", "redis")


@dataclass(frozen=True)
class Row:
    """One case, summarized over the rounds."""

    flow: str
    name: str
    messages: int
    rate: float  # median msg/s
    cpu_us: float | None  # median client CPU µs per message
    ratio: float  # median of the within-round ratios to the flow's reference case
    eventbus: bool
    reference: bool


@dataclass(frozen=True)
class Target:
    """``case`` must be at least ``ratio`` times as fast as ``against`` (same flow, same round)."""

    flow: str
    case: str
    against: str
    ratio: float


@dataclass(frozen=True)
class Verdict:
    text: str
    measured: str
    met: bool


def rate(case: Case, timing: Timing) -> float:
    return case.messages / timing.wall


def cpu_us(case: Case, timing: Timing) -> float | None:
    return None if timing.cpu is None else timing.cpu / case.messages * 1e6


def summarize(cases: list[Case], rounds: list[Round]) -> list[Row]:
    """One row per case: median msg/s and median within-round ratio to its flow's reference."""
    reference = {case.flow: case for case in cases if case.reference}
    rows = []
    for case in cases:
        done = [r for r in rounds if _key(case) in r]
        if not done:
            continue
        rates = [rate(case, r[_key(case)]) for r in done]
        cpus = [c for c in (cpu_us(case, r[_key(case)]) for r in done) if c is not None]
        base = reference[case.flow]
        ratios = [rate(case, r[_key(case)]) / rate(base, r[_key(base)]) for r in done if _key(base) in r]
        rows.append(
            Row(
                case.flow,
                case.name,
                case.messages,
                statistics.median(rates),
                statistics.median(cpus) if cpus else None,
                statistics.median(ratios) if ratios else float("nan"),
                case.name.startswith("eventbus"),
                case.reference,
            )
        )
    return rows


def judge(
    cases: list[Case], rounds: list[Round], targets: list[Target], max_us: tuple[str, str, float]
) -> list[Verdict]:
    """Each target with its median within-round ratio; plus the ceiling ``max_us`` on client CPU µs per message."""
    by_name = {_key(case): case for case in cases}
    verdicts = []
    for target in targets:
        case, against = by_name.get((target.flow, target.case)), by_name.get((target.flow, target.against))
        if case is None or against is None:
            continue
        ratios = [
            rate(case, r[_key(case)]) / rate(against, r[_key(against)])
            for r in rounds
            if _key(case) in r and _key(against) in r
        ]
        if not ratios:
            continue
        measured = statistics.median(ratios)
        verdicts.append(
            Verdict(
                f"{target.flow}: {target.case} >= {target.ratio:g}x {target.against}",
                f"{measured:.2f}x",
                measured >= target.ratio,
            )
        )
    flow, name, ceiling = max_us
    case = by_name.get((flow, name))
    if case is not None:
        timings = [r[_key(case)] for r in rounds if _key(case) in r]
        cpus = [c for c in (cpu_us(case, t) for t in timings) if c is not None]
        if cpus:
            measured = statistics.median(cpus)
            wall = statistics.median(t.wall / case.messages * 1e6 for t in timings)
            verdicts.append(
                Verdict(
                    f"{flow}: {name} <= {ceiling:g} µs of CPU per message",
                    f"{measured:.1f} µs ({wall:.1f} wall)",
                    measured <= ceiling,
                )
            )
    return verdicts


def markdown(rows: list[Row], titles: dict[str, str], verdicts: list[Verdict]) -> str:
    """The table (and the targets) in markdown."""
    lines = [
        "| flow | case | messages | msg/s | ratio | client CPU µs/msg |",
        "|---|---|---:|---:|---:|---:|",
    ]
    last = None
    for row in rows:
        flow = titles.get(row.flow, row.flow) if row.flow != last else ""
        last = row.flow
        name = f"**{row.name}**" if row.eventbus else row.name
        ratio = "1.00x (ref.)" if row.reference else f"{row.ratio:.2f}x"
        cpu = "-" if row.cpu_us is None else f"{row.cpu_us:,.1f}"
        lines.append(f"| {flow} | {name} | {row.messages:,} | {row.rate:,.0f} | {ratio} | {cpu} |")
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {v.text} | {v.measured} | {'yes' if v.met else '**no**'} |" for v in verdicts]
    return "\n".join(lines)


def console(rows: list[Row], titles: dict[str, str], verdicts: list[Verdict]) -> str:
    """The table for the terminal."""
    width = max(len(row.name) for row in rows)
    out = []
    last = None
    for row in rows:
        if row.flow != last:
            out.append(f"\n{titles.get(row.flow, row.flow)}")
            out.append(f"  {'case':<{width}} {'messages':>9} {'msg/s':>9} {'ratio':>7} {'CPU µs/msg':>11}")
            last = row.flow
        cpu = "-" if row.cpu_us is None else f"{row.cpu_us:,.1f}"
        out.append(f"  {row.name:<{width}} {row.messages:>9,} {row.rate:>9,.0f} {row.ratio:>6.2f}x {cpu:>11}")
    out.append("\ntargets (ratios taken within each round, median over the rounds)")
    out += [f"  {'met   ' if v.met else 'MISSED'} {v.text}: {v.measured}" for v in verdicts]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "packages": versions,
    }


def save(
    directory: Path,
    settings: dict[str, Any],
    about: dict[str, Any],
    cases: list[Case],
    rounds: list[Round],
    rows: list[Row],
    verdicts: list[Verdict],
) -> Path:
    """Write ``<date>.json`` into ``directory`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"compare-{stamp}.json"
    document = {
        "machine": about,
        "settings": settings,
        "rounds": [
            [
                {
                    "flow": c.flow,
                    "case": c.name,
                    "messages": c.messages,
                    "seconds": r[_key(c)].wall,
                    "cpu_seconds": r[_key(c)].cpu,
                }
                for c in cases
                if _key(c) in r
            ]
            for r in rounds
        ],
        "summary": [row.__dict__ for row in rows],
        "targets": [v.__dict__ for v in verdicts],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def chart(path: Path, rows: list[Row], titles: dict[str, str], about: dict[str, Any]) -> None:
    """One horizontal bar chart per flow: msg/s, eventbus highlighted, the ratio written at each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    flows = list(dict.fromkeys(row.flow for row in rows))
    heights = [len([r for r in rows if r.flow == flow]) + 1.2 for flow in flows]
    figure, axes = plt.subplots(
        len(flows), 1, figsize=(11, 0.42 * sum(heights) + 1.2), gridspec_kw={"height_ratios": heights}
    )
    for axis, flow in zip(figure.axes if len(flows) > 1 else [axes], flows, strict=True):
        mine = [row for row in rows if row.flow == flow][::-1]
        colors = ["#1f77b4" if row.eventbus else "#b0b0b0" for row in mine]
        bars = axis.barh([row.name for row in mine], [row.rate for row in mine], color=colors)
        top = max(row.rate for row in mine)
        for bar, row in zip(bars, mine, strict=True):
            label = f" {row.rate:,.0f} msg/s  ({row.ratio:.2f}x)"
            axis.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=8.5)
        axis.set_xlim(0, top * 1.45)
        axis.set_title(titles.get(flow, flow), loc="left", fontsize=10, fontweight="bold")
        axis.tick_params(axis="y", labelsize=8.5)
        axis.tick_params(axis="x", labelsize=8)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        axis.spines[["top", "right"]].set_visible(False)
    figure.suptitle(
        f"eventbus and its peers, msg/s (median of rounds; ratio to the first row of each flow, within rounds)\n"
        f"{about['date'][:10]}, Python {about['python']}, {about['cpus']} cores shared with other work",
        fontsize=10,
    )
    figure.legend(
        handles=[Patch(color="#1f77b4", label="eventbus"), Patch(color="#b0b0b0", label="peers")],
        loc="upper right",
        fontsize=8.5,
        frameon=False,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.985))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _key(case: Case) -> tuple[str, str]:
    return (case.flow, case.name)
