"""Two services of a shop, run as separate processes by the tests.

``python rabbitmq_services.py SERVICE URL UID OUTPUT`` runs ``billing`` or
``shipping`` until SIGTERM, writing one JSON line per handled message to OUTPUT.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import attrs

from eventbus import Bus, Context, Registry


def declare(registry: Registry, uid: str) -> dict[str, type]:
    """The shop's message types, on topics private to one test run."""

    @registry.message(topic=f"orders-{uid}")
    @attrs.frozen
    class OrderPlaced:
        order_id: str

    @registry.message(topic=f"orders-{uid}")
    @attrs.frozen
    class OrderCancelled:
        order_id: str

    @registry.message(topic=f"payments-{uid}")
    @attrs.frozen
    class PaymentCharged:
        order_id: str

    return {"OrderPlaced": OrderPlaced, "OrderCancelled": OrderCancelled, "PaymentCharged": PaymentCharged}


def service(name: str, url: str, uid: str, output: str) -> Bus:
    """``billing`` takes orders and charges them; ``shipping`` takes orders and payments."""
    registry = Registry()
    types = declare(registry, uid)
    lock = threading.Lock()

    def record(event: Any, ctx: Context) -> None:
        envelope = ctx.envelope
        line = {
            "service": name,
            "manifest": envelope.manifest,
            "order_id": event.order_id,
            "message_id": envelope.message_id,
            "correlation_id": envelope.correlation_id,
            "causation_id": envelope.causation_id,
        }
        with lock, open(output, "a") as out:
            out.write(json.dumps(line) + "\n")

    if name == "billing":

        @registry.subscribe(types["OrderPlaced"])
        def charge(event: Any, ctx: Context) -> None:
            record(event, ctx)
            ctx.publish(types["PaymentCharged"](event.order_id))

        @registry.subscribe(types["OrderCancelled"])
        def refund(event: Any, ctx: Context) -> None:
            record(event, ctx)

    else:

        @registry.subscribe(types["OrderPlaced"], types["PaymentCharged"])
        def ship(event: Any, ctx: Context) -> None:
            record(event, ctx)

    return Bus(service=f"{name}-{uid}", url=url, registry=registry)


if __name__ == "__main__":
    service(*sys.argv[1:5]).run()
