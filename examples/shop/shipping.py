"""The shipping service: books a carrier once an order is paid.

The carrier's API times out on the first call for one order; the handler
just raises, and the bus retries it after a short backoff.
"""

from __future__ import annotations

import threading

from eventbus import Backoff, Context, subscribe

from .journal import count, say
from .messages import OrderCancelled, OrderShipped, PaymentCharged, StockReleased

_flaky_orders = {"o-1003"}
_lock = threading.Lock()


class CarrierTimeout(Exception):
    """The carrier did not answer in time."""


@subscribe(PaymentCharged, retries=3, backoff=Backoff(initial=0.2, factor=2))
def book_carrier(event: PaymentCharged, ctx: Context) -> None:
    with _lock:
        flaky = event.order_id in _flaky_orders
        _flaky_orders.discard(event.order_id)
    if flaky:
        count("retries")
        say(ctx, "shipping", f"{event.order_id}: carrier timed out, the bus will retry")
        raise CarrierTimeout(event.order_id)
    tracking = f"TRK-{event.order_id[-4:]}"
    say(ctx, "shipping", f"{event.order_id} booked with the carrier")
    ctx.publish(OrderShipped(event.order_id, tracking))


@subscribe(OrderCancelled)
def release_stock(event: OrderCancelled, ctx: Context) -> None:
    say(ctx, "shipping", f"{event.order_id}: stock released")
    ctx.publish(StockReleased(event.order_id))
