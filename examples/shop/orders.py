"""The orders service: takes orders, cancels the ones that cannot be paid."""

from __future__ import annotations

from eventbus import Context, subscribe

from .journal import count, flow, say
from .messages import OrderCancelled, OrderShipped, PaymentCharged, PaymentDeclined


@subscribe(PaymentCharged)
def mark_paid(event: PaymentCharged, ctx: Context) -> None:
    flow(ctx)
    count("paid")
    say(ctx, "orders", f"{event.order_id} is paid")


@subscribe(PaymentDeclined)
def cancel(event: PaymentDeclined, ctx: Context) -> None:
    """Compensation: a declined payment cancels the order."""
    count("cancelled")
    say(ctx, "orders", f"{event.order_id} cancelled ({event.reason})")
    ctx.publish(OrderCancelled(event.order_id, event.reason))


@subscribe(OrderShipped)
def mark_shipped(event: OrderShipped, ctx: Context) -> None:
    count("shipped")
    say(ctx, "orders", f"{event.order_id} is on its way, tracking {event.tracking}")
