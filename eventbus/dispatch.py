"""Dispatch: decode, de-duplicate, route, call the handlers, settle.

One :class:`Dispatcher` serves one queue. It is backend-agnostic: it only
sees :class:`~eventbus.backends.base.Delivery` objects. Whatever arrives, it
settles the delivery exactly once and never raises: a message that cannot
be decoded is dead-lettered with the reason, a failing handler is retried
through the broker or dead-lettered after its last attempt.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import attrs

from eventbus import envelope as headers
from eventbus.aio import LoopThread
from eventbus.backends.base import Delivery
from eventbus.context import Context, _Publisher, current_envelope
from eventbus.dedup import Claim, DedupCache
from eventbus.envelope import Envelope
from eventbus.errors import DecodeError
from eventbus.marshal import Marshaller
from eventbus.middleware import Chain, call_quietly
from eventbus.specs import HandlerSpec, message_spec

log = logging.getLogger("eventbus.dispatch")

Action = Literal["ack", "retry", "dead_letter"]
_TRACEBACK_LIMIT = 4000
_MESSAGE_LIMIT = 1000


@attrs.frozen
class Failure:
    """A handler that did not succeed on a delivery, and what that means."""

    handler: str
    error: BaseException | None
    action: Literal["retry", "dead_letter", "drop", "busy"]


@attrs.define
class Outcome:
    """What the dispatcher did with one delivery."""

    action: Action
    envelope: Envelope
    message: Any = None
    handled: list[str] = attrs.Factory(list)
    skipped: list[str] = attrs.Factory(list)
    failures: list[Failure] = attrs.Factory(list)
    reason: str | None = None
    delay: float | None = None


class Dispatcher:
    """Handles deliveries from one queue.

    ``routes`` pairs each message type that arrives on the queue with a
    handler that takes it; a type with several handlers appears once per
    handler, in the order they run.
    """

    def __init__(
        self,
        *,
        service: str,
        queue: str,
        routes: Sequence[tuple[type[Any], HandlerSpec]],
        marshaller: Marshaller,
        bus: _Publisher,
        loop: LoopThread,
        dedup: DedupCache | None = None,
        middleware: Chain | None = None,
    ) -> None:
        self.service = service
        self.queue = queue
        self._middleware = middleware if middleware is not None else Chain()
        self._marshaller = marshaller
        self._bus = bus
        self._loop = loop
        self._dedup = dedup
        by_manifest: dict[str, tuple[type[Any], list[HandlerSpec]]] = {}
        for tp, handler in routes:
            spec = message_spec(tp)
            assert spec is not None
            by_manifest.setdefault(spec.manifest, (tp, []))[1].append(handler)
        self._routes: Mapping[str, tuple[type[Any], tuple[HandlerSpec, ...]]] = {
            manifest: (tp, tuple(hs)) for manifest, (tp, hs) in by_manifest.items()
        }

    @property
    def manifests(self) -> frozenset[str]:
        """The manifests this queue has handlers for."""
        return frozenset(self._routes)

    def __call__(self, delivery: Delivery) -> Outcome:
        """Handle and settle ``delivery``."""
        envelope = delivery.envelope
        route = self._routes.get(envelope.manifest)
        if route is None:
            if not envelope.manifest:
                return self._poison(delivery, DecodeError("unknown-manifest", "the message has no manifest header"))
            if self._marshaller.type_for(envelope.manifest) is None:
                error = DecodeError("unknown-manifest", f"no message type is declared as {envelope.manifest!r}")
            else:
                error = DecodeError("no-handler", f"queue {self.queue!r} has no handler for {envelope.manifest!r}")
            return self._poison(delivery, error)
        cls, handlers = route
        try:
            message = self._marshaller.decode(envelope, cls)
        except DecodeError as error:
            return self._poison(delivery, error)

        handled: list[str] = []
        skipped: list[str] = []
        failures: list[Failure] = []
        dedup = self._dedup
        debug = log.isEnabledFor(logging.DEBUG)
        for handler in handlers:
            if dedup is not None:
                key = f"{self.service}:{handler.name}:{envelope.message_id}"
                claim = self._claim(key)
                if claim is Claim.DONE:
                    skipped.append(handler.name)
                    continue
                if claim is not Claim.CLAIMED:
                    failures.append(Failure(handler.name, None, "busy"))
                    continue
            try:
                self._invoke(handler, message, envelope, debug)
            except Exception as error:
                failure = Failure(handler.name, error, self._failure_action(handler, envelope))
                failures.append(failure)
                if dedup is not None:
                    self._settle_claim(key, done=failure.action == "drop")
                self._log_failure(failure, envelope)
            else:
                handled.append(handler.name)
                if dedup is not None:
                    self._settle_claim(key, done=True)
        if not failures:
            delivery.ack()
            outcome = Outcome("ack", envelope, message, handled, skipped)
        else:
            outcome = self._settle(delivery, message, handled, skipped, failures, handlers)
        if self._middleware.settled:
            call_quietly(self._middleware.settled, self.queue, outcome.envelope, outcome.action, outcome.reason)
        if debug:
            log.debug(
                "%s %s %s attempt %d: %s%s%s",
                self.queue,
                envelope.manifest,
                envelope.message_id,
                envelope.attempt,
                outcome.action.replace("_", "-"),
                "" if outcome.delay is None else f" in {outcome.delay:.1f}s",
                "" if outcome.reason is None else f" ({outcome.reason})",
                extra=log_fields(envelope, queue=self.queue, reason=outcome.reason),
            )
        return outcome

    # -- calling ----------------------------------------------------------

    def _invoke(self, handler: HandlerSpec, message: Any, envelope: Envelope, debug: bool) -> None:
        chain = self._middleware
        observed = chain.handles or debug
        ctx = Context(self._bus, envelope, handler.name, self.queue) if handler.takes_context or observed else None
        args: tuple[Any, ...] = (message, ctx) if handler.takes_context else (message,)
        if not observed:
            self._call(handler, args, envelope)
            return
        assert ctx is not None
        for hook in chain.before_handle:
            hook(ctx, message)
        started = time.perf_counter()
        try:
            self._call(handler, args, envelope)
        except Exception as error:
            call_quietly(chain.handle_failed, ctx, message, error, time.perf_counter() - started)
            raise
        duration = time.perf_counter() - started
        call_quietly(chain.after_handle, ctx, message, duration)
        log.debug(
            "%s handled %s %s in %.1f ms",
            handler.name,
            envelope.manifest,
            envelope.message_id,
            duration * 1000,
            extra=log_fields(envelope, queue=self.queue, handler=handler.name, duration=duration),
        )

    def _call(self, handler: HandlerSpec, args: tuple[Any, ...], envelope: Envelope) -> None:
        if handler.is_async:
            self._loop.run(_call_async(handler.fn, args, envelope))
            return
        token = current_envelope.set(envelope)
        try:
            handler.fn(*args)
        finally:
            current_envelope.reset(token)

    @staticmethod
    def _failure_action(handler: HandlerSpec, envelope: Envelope) -> Literal["retry", "dead_letter", "drop"]:
        if handler.on_failure != "retry":
            return handler.on_failure
        return "dead_letter" if envelope.attempt >= handler.max_attempts else "retry"

    # -- de-duplication -----------------------------------------------------

    def _claim(self, key: str) -> Claim:
        assert self._dedup is not None
        try:
            return self._dedup.claim(key)
        except Exception:
            # Unable to check: do not run the handler (it may have run), do not
            # ack either; the message comes back later.
            log.warning("de-duplication cache unavailable while claiming %s; will retry later", key, exc_info=True)
            return Claim.BUSY

    def _settle_claim(self, key: str, *, done: bool) -> None:
        assert self._dedup is not None
        try:
            if done:
                self._dedup.done(key)
            else:
                self._dedup.release(key)
        except Exception:
            log.warning("de-duplication cache unavailable while settling %s", key, exc_info=True)

    # -- settling -----------------------------------------------------------

    def _settle(
        self,
        delivery: Delivery,
        message: Any,
        handled: list[str],
        skipped: list[str],
        failures: list[Failure],
        handlers: tuple[HandlerSpec, ...],
    ) -> Outcome:
        envelope = delivery.envelope
        outcome = Outcome("ack", envelope, message, handled, skipped, failures)
        final = next((f for f in failures if f.action == "dead_letter"), None)
        retrying = [f for f in failures if f.action in ("retry", "busy")]
        if final is not None:
            dead = _with_error(envelope, "handler-failed", final.error, final.handler, self.queue, self.service)
            delivery.dead_letter(dead)
            return attrs.evolve(outcome, action="dead_letter", envelope=dead, reason="handler-failed")
        if retrying:
            by_name = {h.name: h for h in handlers}
            delay = max(by_name[f.handler].backoff.delay(envelope.attempt) for f in retrying)
            # A "busy" claim means another worker is handling it right now: not a failed attempt.
            attempt = envelope.attempt + (1 if any(f.action == "retry" for f in retrying) else 0)
            again = attrs.evolve(envelope, attempt=attempt)
            delivery.retry(again, delay)
            return attrs.evolve(outcome, action="retry", envelope=again, delay=delay)
        delivery.ack()
        return outcome

    def _poison(self, delivery: Delivery, error: DecodeError) -> Outcome:
        log.error(
            "dead-lettering message %s (%s) from %s: %s",
            delivery.envelope.message_id,
            delivery.envelope.manifest or "no manifest",
            self.queue,
            error,
            extra=log_fields(delivery.envelope, queue=self.queue, reason=error.reason),
        )
        dead = _with_error(delivery.envelope, error.reason, error, None, self.queue, self.service)
        delivery.dead_letter(dead)
        call_quietly(self._middleware.settled, self.queue, dead, "dead_letter", error.reason)
        return Outcome("dead_letter", dead, reason=error.reason)

    def _log_failure(self, failure: Failure, envelope: Envelope) -> None:
        level = logging.ERROR if failure.action == "dead_letter" else logging.WARNING
        what = {"retry": "will retry", "dead_letter": "dead-lettering", "drop": "dropping it"}.get(failure.action, "")
        log.log(
            level,
            "handler %s failed on %s %s (attempt %d), %s: %r",
            failure.handler,
            envelope.manifest,
            envelope.message_id,
            envelope.attempt,
            what,
            failure.error,
            exc_info=failure.error if level == logging.ERROR else None,
            extra=log_fields(envelope, queue=self.queue, handler=failure.handler),
        )


def log_fields(
    envelope: Envelope,
    *,
    queue: str | None = None,
    handler: str | None = None,
    duration: float | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Structured fields for a log record (``logger.info(..., extra=log_fields(...))``).

    JSON log formatters pick them up as top-level keys.
    """
    fields: dict[str, Any] = {
        "message_id": envelope.message_id,
        "manifest": envelope.manifest,
        "correlation_id": envelope.correlation_id,
        "causation_id": envelope.causation_id,
        "attempt": envelope.attempt,
    }
    if queue is not None:
        fields["queue"] = queue
    if handler is not None:
        fields["handler"] = handler
    if duration is not None:
        fields["duration_ms"] = round(duration * 1000, 3)
    if reason is not None:
        fields["reason"] = reason
    return fields


async def _call_async(fn: Callable[..., Any], args: tuple[Any, ...], envelope: Envelope) -> None:
    token = current_envelope.set(envelope)
    try:
        await fn(*args)
    finally:
        current_envelope.reset(token)


def _with_error(
    envelope: Envelope,
    reason: str,
    error: BaseException | None,
    handler: str | None,
    queue: str,
    service: str,
) -> Envelope:
    extra = dict(envelope.headers)
    extra[headers.ERROR_REASON] = reason
    extra[headers.ERROR_ATTEMPT] = str(envelope.attempt)
    extra[headers.ERROR_QUEUE] = queue
    extra[headers.ERROR_SERVICE] = service
    extra[headers.ERROR_TYPE] = "" if error is None else f"{type(error).__module__}.{type(error).__qualname__}"
    text = error.detail if isinstance(error, DecodeError) else str(error or "")
    extra[headers.ERROR_MESSAGE] = text[:_MESSAGE_LIMIT]
    if error is not None and error.__traceback__ is not None:
        extra[headers.ERROR_TRACEBACK] = "".join(traceback.format_exception(error))[-_TRACEBACK_LIMIT:]
    if handler is not None:
        extra[headers.ERROR_HANDLER] = handler
    extra[headers.DEAD_LETTERED_AT] = repr(time.time())
    return attrs.evolve(envelope, headers=extra)
