"""Hooks around publishing and handling: metrics, tracing, logging, auditing.

Subclass :class:`Middleware`, override the hooks you need, and pass it to
``Bus(middleware=[...])`` or ``bus.add_middleware(...)``. ``before_*`` hooks
run in the order the middleware was added, the others in reverse order (so
the first middleware wraps all the others).

An exception in a ``before_*`` hook fails the operation: ``publish``
raises, or the handler counts as failed (and is retried). Exceptions in the
other hooks are logged and ignored: the operation has already happened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from eventbus.context import Context
from eventbus.envelope import Envelope

log = logging.getLogger("eventbus.middleware")


class Middleware:
    """Hooks called around publishing and handling. Every hook does nothing by default."""

    def before_publish(self, message: Any, envelope: Envelope) -> None:
        """Before the broker gets ``envelope``; may add entries to ``envelope.headers``."""

    def after_publish(self, message: Any, envelope: Envelope) -> None:
        """After the broker accepted ``envelope``."""

    def publish_failed(self, message: Any, envelope: Envelope, error: BaseException) -> None:
        """The broker did not accept ``envelope``; ``error`` propagates to the caller next."""

    def before_handle(self, ctx: Context, message: Any) -> None:
        """Before handler ``ctx.handler`` runs on ``message``."""

    def after_handle(self, ctx: Context, message: Any, duration: float) -> None:
        """The handler returned after ``duration`` seconds."""

    def handle_failed(self, ctx: Context, message: Any, error: BaseException, duration: float) -> None:
        """The handler raised ``error`` after ``duration`` seconds."""

    def settled(self, queue: str, envelope: Envelope, action: str, reason: str | None) -> None:
        """A delivery from ``queue`` was settled: ``action`` is ``ack``, ``retry`` or ``dead_letter``.

        ``reason`` says why a message was dead-lettered (``handler-failed``,
        ``undecodable`` ...).
        """


def call_quietly(hooks: Sequence[Callable[..., None]], *args: Any) -> None:
    """Call each hook, logging (not raising) what it raises."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            log.exception("middleware hook %s failed", getattr(hook, "__qualname__", hook))


class Chain:
    """The middleware of one bus, as bound hook lists (empty lists cost nothing)."""

    def __init__(self, middleware: Sequence[Middleware] = ()) -> None:
        self.middleware = list(middleware)
        self._build()

    def add(self, middleware: Middleware) -> None:
        """Append ``middleware`` (it wraps nothing added before it)."""
        self.middleware.append(middleware)
        self._build()

    def _build(self) -> None:
        forward, backward = self.middleware, self.middleware[::-1]
        overridden = _overridden
        self.before_publish = [m.before_publish for m in forward if overridden(m, "before_publish")]
        self.after_publish = [m.after_publish for m in backward if overridden(m, "after_publish")]
        self.publish_failed = [m.publish_failed for m in backward if overridden(m, "publish_failed")]
        self.before_handle = [m.before_handle for m in forward if overridden(m, "before_handle")]
        self.after_handle = [m.after_handle for m in backward if overridden(m, "after_handle")]
        self.handle_failed = [m.handle_failed for m in backward if overridden(m, "handle_failed")]
        self.settled = [m.settled for m in backward if overridden(m, "settled")]
        self.handles = bool(self.before_handle or self.after_handle or self.handle_failed)
        self.publishes = bool(self.before_publish or self.after_publish or self.publish_failed)


def _overridden(middleware: Middleware, name: str) -> bool:
    return getattr(type(middleware), name) is not getattr(Middleware, name)
