"""Run the shop: ``python -m examples.shop [memory|rabbitmq|redis|sqs]``.

``memory`` (the default) runs the three services on worker threads in this
process. The other backends run each service in its own process, as they
would be deployed; ``sqs`` starts a local SNS/SQS server first. Setting
``$EVENTBUS_URL`` runs the processes on that broker instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import attrs

from eventbus import Bus, Context, Envelope, Registry, wait_until
from eventbus.backends import redact_url

from . import journal
from .local_sqs import LocalSqs
from .messages import OrderClosed, OrderPlaced
from .service import SERVICES

ORDERS = [
    OrderPlaced("o-1001", "ada", 1_200),
    OrderPlaced("o-1002", "grace", 89_000),  # over the card limit: declined, then cancelled
    OrderPlaced("o-1003", "linus", 4_500),  # the carrier times out once: retried
    OrderPlaced("o-1004", "barbara", 23_900),
]
# A legacy producer sends an OrderPlaced whose amount is text: poison.
LEGACY_BODY = b'{"order_id": "o-legacy", "customer": "?", "amount_cents": "a lot"}'
URLS = {
    "memory": "memory://shop",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "redis": "redis://127.0.0.1:6379/0?prefix=shop-demo:",
}


class Monitor:
    """A fourth service, in the driver: it counts the orders of this run that closed."""

    def __init__(self, url: str, flows: set[str]) -> None:
        self.closed: set[str] = set()
        self.flows = flows
        registry = Registry()
        registry.subscribe(OrderClosed)(self.on_closed)
        self.bus = Bus("shop-monitor", url, registry=registry)

    def on_closed(self, event: OrderClosed, ctx: Context) -> None:
        if ctx.correlation_id in self.flows:
            self.closed.add(event.order_id)


@contextlib.contextmanager
def services_in_processes(url: str, counts: Counter[str]) -> Iterator[None]:
    """The three services, each in its own process; their output is relayed, their counters summed."""
    env = {**os.environ, "EVENTBUS_URL": url, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "examples.shop.service", name], env=env, stdout=subprocess.PIPE, text=True
        )
        for name in SERVICES
    ]
    lock = threading.Lock()

    def relay(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("COUNTS "):
                with lock:
                    counts.update(json.loads(line[len("COUNTS ") :]))
            elif line.strip() != "ready":
                print(line, end="", flush=True)

    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("a service did not start; is the broker running?")
    relays = [threading.Thread(target=relay, args=(proc,), daemon=True) for proc in procs]
    for thread in relays:
        thread.start()
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc, thread in zip(procs, relays, strict=True):
            proc.wait(30)
            thread.join(5)


@contextlib.contextmanager
def services_in_threads(buses: list[Bus], counts: Counter[str]) -> Iterator[None]:
    """The three services on worker threads of this process."""
    for bus in buses:
        bus.start()
    try:
        yield
    finally:
        for bus in buses:
            bus.stop(timeout=10)
        counts.update(journal.counts)


def run(url: str, *, in_processes: bool) -> int:
    buses = [Bus(name, url).include(f"examples.shop.{name}") for name in SERVICES]
    where = "in three processes" if in_processes else "on worker threads in one process"
    print(f"eventbus shop demo on {redact_url(url)}, the services {where}\n")
    for bus in buses:
        print(bus.topology(), end="\n\n")

    flows = {os.urandom(16).hex() for _ in ORDERS}
    monitor = Monitor(url, flows)
    counts: Counter[str] = Counter()
    started = time.monotonic()
    poison_id = os.urandom(16).hex()
    services = services_in_processes(url, counts) if in_processes else services_in_threads(buses, counts)
    publisher = buses[0]
    with services, monitor.bus:
        print("event flow (flow = the last digits of the order's correlation id):")
        for order, flow in zip(ORDERS, sorted(flows), strict=True):
            publisher.publish(order, correlation_id=flow)
        poison = Envelope.from_wire(LEGACY_BODY, {"manifest": "OrderPlaced", "content-type": "application/json"})
        publisher.backend.publish("orders", attrs.evolve(poison, message_id=poison_id))

        def finished() -> bool:
            dead = [e for bus in buses for e in bus.dead_letters() if e.message_id == poison_id]
            return len(monitor.closed) == len(ORDERS) and len(dead) == 1

        wait_until(finished, timeout=60, interval=0.1, message="every order closed, the poison dead-lettered")
    elapsed = time.monotonic() - started

    dead_letters = [env for bus in buses for env in bus.dead_letters() if env.message_id == poison_id]
    print("\ndead letters:")
    for env in dead_letters:
        print(f"  {env.manifest} from queue {env.headers['error-queue']}: {env.headers['error-reason']}")
        print(f"    {env.headers['error-message'][:110]}")

    counts["placed"] = len(ORDERS)
    rows = [
        ("orders placed", counts["placed"]),
        ("orders paid", counts["paid"]),
        ("orders shipped", counts["shipped"]),
        ("orders cancelled", counts["cancelled"]),
        ("handler retries", counts["retries"]),
        ("dead letters", len(dead_letters)),
    ]
    print("\nsummary")
    print("  +------------------+-------+")
    for label, value in rows:
        print(f"  | {label:<16} | {value:>5} |")
    print("  +------------------+-------+")
    print(f"  done in {elapsed:.2f}s")
    expected = {"placed": 4, "paid": 3, "shipped": 3, "cancelled": 1, "retries": 1}
    return 0 if all(counts[k] == v for k, v in expected.items()) else 1


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.CRITICAL)  # the demo prints its own story
    backend = argv[0] if argv else "memory"
    if backend not in (*URLS, "sqs"):
        print(f"usage: python -m examples.shop [{'|'.join([*URLS, 'sqs'])}]", file=sys.stderr)
        return 2
    url = os.environ.get("EVENTBUS_URL")
    if url:
        return run(url, in_processes=not url.startswith("memory://"))
    if backend == "sqs":
        with LocalSqs() as local:
            return run(local, in_processes=True)
    return run(URLS[backend], in_processes=backend != "memory")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
