"""The orders service: follows each order to its end, and cancels what cannot be paid.

An order closes once it is both paid and shipped, or, after a declined
payment, once shipping has released its stock; ``OrderClosed`` is the last
message of every flow.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from eventbus import Context, subscribe

from .journal import count, say
from .messages import OrderCancelled, OrderClosed, OrderShipped, PaymentCharged, PaymentDeclined, StockReleased

_lock = threading.Lock()
_progress: defaultdict[str, set[str]] = defaultdict(set)


def _advance(ctx: Context, order_id: str, step: str) -> None:
    with _lock:
        _progress[order_id].add(step)
        done = _progress[order_id] >= {"paid", "shipped"}
    if done:
        say(ctx, "orders", f"{order_id} closed: delivered")
        ctx.publish(OrderClosed(order_id, "delivered"))


@subscribe(PaymentCharged)
def mark_paid(event: PaymentCharged, ctx: Context) -> None:
    count("paid")
    say(ctx, "orders", f"{event.order_id} is paid")
    _advance(ctx, event.order_id, "paid")


@subscribe(OrderShipped)
def mark_shipped(event: OrderShipped, ctx: Context) -> None:
    count("shipped")
    say(ctx, "orders", f"{event.order_id} is on its way, tracking {event.tracking}")
    _advance(ctx, event.order_id, "shipped")


@subscribe(PaymentDeclined)
def cancel(event: PaymentDeclined, ctx: Context) -> None:
    """Compensation: a declined payment cancels the order."""
    count("cancelled")
    say(ctx, "orders", f"{event.order_id} cancelled ({event.reason})")
    ctx.publish(OrderCancelled(event.order_id, event.reason))


@subscribe(StockReleased)
def close_cancelled(event: StockReleased, ctx: Context) -> None:
    say(ctx, "orders", f"{event.order_id} closed: cancelled")
    ctx.publish(OrderClosed(event.order_id, "cancelled"))
