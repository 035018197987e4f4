"""The payments service: charges orders, declines what the card limit refuses."""

from __future__ import annotations

from eventbus import Context, subscribe

from .journal import say
from .messages import OrderPlaced, PaymentCharged, PaymentDeclined

CARD_LIMIT_CENTS = 50_000


@subscribe(OrderPlaced)
def charge(event: OrderPlaced, ctx: Context) -> None:
    if event.amount_cents > CARD_LIMIT_CENTS:
        say(ctx, "payments", f"{event.order_id} declined: {event.amount_cents / 100:.2f} is over the card limit")
        ctx.publish(PaymentDeclined(event.order_id, "card limit exceeded"))
        return
    say(ctx, "payments", f"{event.order_id} charged {event.amount_cents / 100:.2f} to {event.customer}")
    ctx.publish(PaymentCharged(event.order_id, event.amount_cents))
