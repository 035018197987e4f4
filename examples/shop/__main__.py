"""Run the shop: three services on one bus, real worker threads.

The URL comes from ``$EVENTBUS_URL`` (default ``memory://shop``).
"""

from __future__ import annotations

import logging
import os
import sys
import time

from eventbus import Bus, Envelope, wait_until

from . import journal
from .messages import OrderPlaced

ORDERS = [
    OrderPlaced("o-1001", "ada", 1_200),
    OrderPlaced("o-1002", "grace", 89_000),  # over the card limit: declined, then cancelled
    OrderPlaced("o-1003", "linus", 4_500),  # the carrier times out once: retried
    OrderPlaced("o-1004", "barbara", 23_900),
]

# A legacy producer sends an OrderPlaced whose amount is text: poison.
LEGACY_BODY = b'{"order_id": "o-legacy", "customer": "?", "amount_cents": "a lot"}'


def main() -> int:
    logging.basicConfig(level=logging.CRITICAL)  # the demo prints its own story
    url = os.environ.get("EVENTBUS_URL", "memory://shop")
    buses = [
        Bus("orders", url).include("examples.shop.orders"),
        Bus("payments", url).include("examples.shop.payments"),
        Bus("shipping", url).include("examples.shop.shipping"),
    ]
    for bus in buses:
        bus.start()
    print(f"eventbus shop demo on {buses[0]!r}\n")
    for bus in buses:
        print(bus.topology(), end="\n\n")

    started = time.monotonic()
    orders = buses[0]
    print("event flow (flow = correlation id of one order):")
    for order in ORDERS:
        journal.count("placed")
        orders.publish(order)
    orders.backend.publish(
        "orders", Envelope.from_wire(LEGACY_BODY, {"manifest": "OrderPlaced", "content-type": "application/json"})
    )

    def finished() -> bool:
        counts = journal.counts
        dead = sum(len(bus.dead_letters()) for bus in buses)
        return counts["shipped"] + counts["cancelled"] == len(ORDERS) and dead == 1

    try:
        wait_until(finished, timeout=30, interval=0.05, message="every order shipped or cancelled")
    finally:
        for bus in buses:
            bus.stop(timeout=10)
    elapsed = time.monotonic() - started

    dead_letters = [env for bus in buses for env in bus.dead_letters()]
    print("\ndead letters:")
    for env in dead_letters:
        print(f"  {env.manifest} from queue {env.headers['error-queue']}: {env.headers['error-reason']}")
        print(f"    {env.headers['error-message'][:110]}")

    counts = journal.counts
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


if __name__ == "__main__":
    sys.exit(main())
