"""eventbus side by side with the tools its users would pick instead, in one process run.

    just bench                       # makes .bench-venv from bench/requirements.txt, then runs this
    .bench-venv/bin/python bench/side_by_side.py [--rounds 3] [--flows publish,e2e,...]

Flows (see each module of bench/compare/ for exactly what runs):

1. publish: RabbitMQ publishing, raw pika (unconfirmed, confirmed), Kombu, FastStream, eventbus;
2. e2e: RabbitMQ publish -> typed message -> handler -> ack: raw pika, Kombu, FastStream, Dramatiq, eventbus;
3. sqs: SNS/SQS on a local moto_server, one message per call vs eventbus's batches (also through a
   proxy adding 10 ms per call);
4. memory: FastStream's TestRabbitBroker vs bus.testing() vs bus.start() on memory://;
5. dedup: eventbus end to end without and with RedisDedupCache;
6. scaling: eventbus end to end with a 5 ms handler on 1, 2, 4, 8 threads.

Each round runs every case once, flows interleaved; ratios are taken within a round and the
table shows medians over the rounds. Writes bench/results/compare-<time>.json and .png, and
prints the table (also as markdown, for docs/performance.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path

from compare import end_to_end, memory_flow, publish, report, sqs_flow
from compare.common import Case, Settings
from compare.rabbit import rig
from compare.report import Round, Target

RESULTS = Path(__file__).resolve().parent / "results"
FLOWS = ("memory", "publish", "e2e", "sqs")  # e2e covers the dedup and scaling flows too

TITLES = {
    publish.FLOW: "1. " + publish.TITLE,
    end_to_end.FLOW: "2. " + end_to_end.TITLE,
    sqs_flow.FLOW: "3. " + sqs_flow.TITLE,
    sqs_flow.RTT_FLOW: "3b. " + sqs_flow.RTT_TITLE,
    memory_flow.FLOW: "4. " + memory_flow.TITLE,
    end_to_end.DEDUP_FLOW: "5. " + end_to_end.DEDUP_TITLE,
    end_to_end.SCALING_FLOW: "6. " + end_to_end.SCALING_TITLE,
}
ORDER = list(TITLES)

TARGETS = [
    Target(publish.FLOW, publish.EVENTBUS_MANY, publish.RAW_UNCONFIRMED, 0.8),
    Target(end_to_end.FLOW, end_to_end.EVENTBUS, end_to_end.RAW, 0.8),
    Target(end_to_end.FLOW, end_to_end.EVENTBUS, end_to_end.KOMBU_CONFIRMED, 1.5),
    Target(end_to_end.FLOW, end_to_end.EVENTBUS, end_to_end.KOMBU, 1.5),
    Target(end_to_end.FLOW, end_to_end.EVENTBUS, end_to_end.FASTSTREAM, 1.5),
    Target(sqs_flow.FLOW, sqs_flow.EVENTBUS, sqs_flow.ONE_PER_CALL, 5.0),
    Target(sqs_flow.RTT_FLOW, sqs_flow.EVENTBUS, sqs_flow.ONE_PER_CALL, 5.0),
    Target(memory_flow.FLOW, memory_flow.TESTING, memory_flow.FASTSTREAM, 10.0),
]
TESTING_CEILING = (memory_flow.FLOW, memory_flow.TESTING, 20.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000, help="per case, for cases that pipeline")
    parser.add_argument(
        "--slow-messages",
        type=int,
        default=4_000,
        help="per case, for the slow cases (a round trip per message; FastStream's TestRabbitBroker)",
    )
    parser.add_argument("--sqs-messages", type=int, default=300)
    parser.add_argument("--scaling-messages", type=int, default=1_000)
    parser.add_argument("--flows", default=",".join(FLOWS), help=f"a subset of {','.join(FLOWS)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    flows = {f.strip() for f in args.flows.split(",") if f.strip()}
    unknown = flows - set(FLOWS)
    if unknown:
        parser.error(f"unknown flows {sorted(unknown)}; pick from {', '.join(FLOWS)}")
    settings = Settings(
        messages=args.messages,
        slow_messages=args.slow_messages,
        sqs_messages=args.sqs_messages,
        scaling_messages=args.scaling_messages,
    )
    about = report.machine()
    print(f"{about['date']}  Python {about['python']}  {about['cpus']} cores  load {about['load_average'][0]:.1f}")
    print("  " + ", ".join(f"{name} {version}" for name, version in about["packages"].items() if version))

    rounds: list[Round] = []
    with ExitStack() as stack:
        cases: list[Case] = []
        if "memory" in flows:
            cases += memory_flow.cases(settings)
        if flows & {"publish", "e2e"}:
            bench_rig = stack.enter_context(rig(settings))
            if "publish" in flows:
                cases += publish.cases(bench_rig)
            if "e2e" in flows:
                cases += end_to_end.cases(bench_rig)
        if "sqs" in flows:
            cases += stack.enter_context(sqs_flow.cases(settings))
        cases.sort(key=lambda case: ORDER.index(case.flow))
        for number in range(1, args.rounds + 1):
            print(f"\nround {number} of {args.rounds}", flush=True)
            timings: Round = {}
            for case in cases:
                # The harness holds five frameworks' worth of objects; freeze them (and collect the last
                # case's garbage) so that the cyclic GC does not scan them on behalf of this case.
                gc.collect()
                gc.freeze()
                timing = case.run()
                timings[(case.flow, case.name)] = timing
                cpu = "" if timing.cpu is None else f", {timing.cpu / case.messages * 1e6:,.1f} µs CPU/msg"
                print(f"  {case.flow:<10} {case.name:<52} {case.messages / timing.wall:>9,.0f} msg/s{cpu}", flush=True)
            rounds.append(timings)

    rows = report.summarize(cases, rounds)
    verdicts = report.judge(cases, rounds, TARGETS, TESTING_CEILING)
    print(report.console(rows, TITLES, verdicts))
    about["load_average_after"] = list(os.getloadavg())
    path = report.save(
        RESULTS, {**dataclasses.asdict(settings), "rounds": args.rounds}, about, cases, rounds, rows, verdicts
    )
    report.chart(path.with_suffix(".png"), rows, TITLES, about)
    print(f"\nresults: {path}\nchart:   {path.with_suffix('.png')}\n")
    print(f"markdown ({time.strftime('%Y-%m-%d')}, medians of {args.rounds} rounds):\n")
    print(report.markdown(rows, TITLES, verdicts))


if __name__ == "__main__":
    main()
