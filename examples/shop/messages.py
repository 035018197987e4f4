"""The messages the three shop services exchange."""

from __future__ import annotations

from attrs import frozen

from eventbus import message


@message(topic="orders")
@frozen
class OrderPlaced:
    order_id: str
    customer: str
    amount_cents: int


@message(topic="orders")
@frozen
class OrderCancelled:
    order_id: str
    reason: str


@message(topic="payments")
@frozen
class PaymentCharged:
    order_id: str
    amount_cents: int


@message(topic="payments")
@frozen
class PaymentDeclined:
    order_id: str
    reason: str


@message(topic="shipping")
@frozen
class OrderShipped:
    order_id: str
    tracking: str


@message(topic="shipping")
@frozen
class StockReleased:
    order_id: str


@message(topic="orders")
@frozen
class OrderClosed:
    order_id: str
    outcome: str
