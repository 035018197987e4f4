"""The Bus: one service's handlers, its broker, and the calls users make."""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from types import FrameType, ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from eventbus.aio import LoopThread
from eventbus.backends import Backend, Consumer, from_url, redact_url
from eventbus.backends.base import DeadLetterTools
from eventbus.context import current_envelope
from eventbus.dedup import DedupCache
from eventbus.dispatch import Dispatcher, log_fields
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, DeclarationError
from eventbus.marshal import Marshaller
from eventbus.middleware import Chain, Middleware, call_quietly
from eventbus.registry import Registry, default_registry
from eventbus.specs import HANDLERS_ATTR, MAX_QUEUE_LENGTH, HandlerSpec, check_resource_name, message_spec
from eventbus.topology import Topology, plan, queue_name

if TYPE_CHECKING:
    from eventbus.testing import Testing

log = logging.getLogger("eventbus")

DEFAULT_URL = "memory://"
URL_VARIABLE = "EVENTBUS_URL"


class Bus:
    """A service on the event bus.

    ``service`` names the deployable: its queue is called after it.
    ``url`` picks the broker (``memory://``, ``amqp://...``, ``sqs://...``,
    ``redis://...``); it defaults to ``$EVENTBUS_URL``, else ``memory://``.
    ``registry`` is where the declarations live (the default registry unless
    you isolate). ``serializer`` is the default for types that do not choose
    one. ``allow_pickle`` opts in to serializers that run code on decode.
    ``dedup`` is a de-duplication cache (see ``MemoryDedupCache``,
    ``RedisDedupCache``). ``concurrency`` handler threads run per queue,
    with up to ``prefetch`` messages taken ahead. ``middleware`` hooks
    around publishing and handling (see :class:`Middleware`).

    Handlers: the bus runs the handlers of the modules passed to
    :meth:`include`; if none was included, every handler in the registry.
    Instances passed to :meth:`include` add their ``@subscribe`` methods.
    """

    def __init__(
        self,
        service: str,
        url: str | None = None,
        *,
        registry: Registry | None = None,
        serializer: str = "json",
        allow_pickle: bool = False,
        dedup: DedupCache | None = None,
        concurrency: int = 4,
        prefetch: int | None = None,
        backend: Backend | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.service = check_resource_name("service", service, f"Bus(service={service!r})", MAX_QUEUE_LENGTH)
        if concurrency < 1:
            raise ConfigurationError(f"Bus(concurrency={concurrency}) must be at least 1")
        self.url = url or os.environ.get(URL_VARIABLE) or DEFAULT_URL
        self.registry = registry if registry is not None else default_registry
        self.serializer = serializer
        self.allow_pickle = allow_pickle
        self.dedup = dedup
        self.concurrency = concurrency
        self.prefetch = prefetch if prefetch is not None else 2 * concurrency
        self._backend = backend if backend is not None else from_url(self.url)
        self._middleware = Chain(middleware)
        self._modules: list[str] = []
        self._bound: list[HandlerSpec] = []
        self._loop = LoopThread(f"eventbus-{self.service}-asyncio")
        self._consumers: list[Consumer] = []
        self._started = False
        self._lock = threading.RLock()
        self._refresh()

    # -- declarations -------------------------------------------------------

    def include(self, *targets: str | ModuleType | object) -> Bus:
        """Add handlers: modules or packages (by name or object), or handler instances.

        A module name is imported (a package with all its submodules), so
        that its decorators register. An instance contributes its methods
        decorated with ``@subscribe``, bound to it, so handlers receive their
        dependencies without globals. Returns the bus, for chaining.
        """
        with self._lock:
            if self._started:
                raise ConfigurationError(f"{self!r}: include() handlers before start()")
            for target in targets:
                if isinstance(target, (str, ModuleType)):
                    self._modules.extend(_import_tree(target))
                else:
                    self._bound.extend(_bind_methods(target))
            self._refresh()
        return self

    def _sync(self) -> None:
        """Re-derive handlers and topology if the registry changed since (handlers imported late)."""
        if self.registry.generation != self._generation and not self._started:
            with self._lock:
                self._refresh()

    def _refresh(self) -> None:
        generation = self.registry.generation
        registered = self.registry.handlers()
        if self._modules:
            wanted = set(self._modules)
            registered = [h for h in registered if getattr(h.fn, "__module__", None) in wanted]
        handlers = [*registered, *self._bound]
        handled = {tp for handler in handlers for tp in handler.types}
        marshaller = Marshaller(
            self.registry, default_serializer=self.serializer, allow_pickle=self.allow_pickle, extra_types=handled
        )
        for handler in handlers:
            for tp in handler.types:
                marshaller.check_decodable(tp, handler.name)
        specs = [*self.registry.messages(), *filter(None, map(message_spec, handled))]
        self._topology = plan(self.service, handlers, specs)
        self._handlers = tuple(handlers)
        self._marshaller = marshaller
        routes: dict[str, list[tuple[type[Any], HandlerSpec]]] = {}
        for handler in handlers:
            for tp in handler.types:
                queue = queue_name(self.service, handler, message_spec(tp))  # type: ignore[arg-type]
                routes.setdefault(queue, []).append((tp, handler))
        self._dispatchers = {
            queue: Dispatcher(
                service=self.service,
                queue=queue,
                routes=pairs,
                marshaller=marshaller,
                bus=self,
                loop=self._loop,
                dedup=self.dedup,
                middleware=self._middleware,
            )
            for queue, pairs in routes.items()
        }
        self._generation = generation

    @property
    def handlers(self) -> tuple[HandlerSpec, ...]:
        """The handlers this bus runs."""
        self._sync()
        return self._handlers

    def topology(self) -> Topology:
        """The broker resources this service needs, as plain data."""
        self._sync()
        return self._topology

    def dispatchers(self) -> Mapping[str, Dispatcher]:
        """The dispatcher of each queue this service consumes."""
        self._sync()
        return self._dispatchers

    @property
    def backend(self) -> Backend:
        """The backend in use (the testing transport inside ``bus.testing()``)."""
        return self._backend

    # -- publishing ---------------------------------------------------------

    def publish(
        self, message: Any, *, headers: Mapping[str, str] | None = None, correlation_id: str | None = None
    ) -> str:
        """Publish ``message`` to its type's topic and return its message id.

        Returns once the broker has accepted it; raises ``PublishError``
        otherwise. Called from inside a handler, the message joins that
        handler's flow (same correlation id, causation = the handled message).
        """
        return self._publish(message, parent=current_envelope.get(), headers=headers, correlation_id=correlation_id)

    def _publish(
        self,
        message: Any,
        *,
        parent: Envelope | None,
        headers: Mapping[str, str] | None,
        correlation_id: str | None = None,
    ) -> str:
        topic, envelope = self._marshaller.encode(
            message, parent=parent, headers=headers, correlation_id=correlation_id
        )
        if self._middleware.publishes:
            self._observed(message, envelope, lambda: self._backend.publish(topic, envelope))
        else:
            self._backend.publish(topic, envelope)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "published %s %s to %s", envelope.manifest, envelope.message_id, topic, extra=log_fields(envelope)
            )
        return envelope.message_id

    def _observed(self, message: Any, envelope: Envelope, publish: Callable[[], None]) -> None:
        chain = self._middleware
        for hook in chain.before_publish:
            hook(message, envelope)
        try:
            publish()
        except BaseException as error:
            call_quietly(chain.publish_failed, message, envelope, error)
            raise
        call_quietly(chain.after_publish, message, envelope)

    def add_middleware(self, middleware: Middleware) -> None:
        """Add hooks around publishing and handling (see :class:`Middleware`)."""
        self._middleware.add(middleware)

    def publish_many(self, messages: Iterable[Any], *, headers: Mapping[str, str] | None = None) -> list[str]:
        """Publish several messages in one go (batched where the broker allows); return their ids."""
        parent = current_envelope.get()
        objects = list(messages)
        batch = [self._marshaller.encode(m, parent=parent, headers=headers) for m in objects]
        chain = self._middleware
        if chain.publishes:
            for message, (_, envelope) in zip(objects, batch, strict=True):
                for hook in chain.before_publish:
                    hook(message, envelope)
        try:
            self._backend.publish_many(batch)
        except BaseException as error:
            for message, (_, envelope) in zip(objects, batch, strict=True):
                call_quietly(chain.publish_failed, message, envelope, error)
            raise
        for message, (_, envelope) in zip(objects, batch, strict=True):
            call_quietly(chain.after_publish, message, envelope)
        return [envelope.message_id for _, envelope in batch]

    def send(self, queue: str, message: Any, *, headers: Mapping[str, str] | None = None) -> str:
        """Put ``message`` straight on ``queue`` (no topic, no fan-out); return its id."""
        return self._send(queue, message, parent=current_envelope.get(), headers=headers)

    def _send(self, queue: str, message: Any, *, parent: Envelope | None, headers: Mapping[str, str] | None) -> str:
        _, envelope = self._marshaller.encode(message, parent=parent, headers=headers)
        if self._middleware.publishes:
            self._observed(message, envelope, lambda: self._backend.send(queue, envelope))
        else:
            self._backend.send(queue, envelope)
        return envelope.message_id

    # -- running --------------------------------------------------------------

    def provision(self) -> None:
        """Create this service's topology on the broker (idempotent)."""
        self._backend.provision(self.topology())

    def start(self) -> Bus:
        """Provision, then consume every queue of this service on background threads."""
        with self._lock:
            if self._started:
                raise ConfigurationError(f"{self!r} is already started")
            self.provision()
            dispatchers = self.dispatchers()
            self._started = True
            try:
                for queue, dispatcher in dispatchers.items():
                    self._consumers.append(
                        self._backend.consume(queue, dispatcher, concurrency=self.concurrency, prefetch=self.prefetch)
                    )
                    log.info("%s consuming %s (%s)", self.service, queue, ", ".join(sorted(dispatcher.manifests)))
            except BaseException:
                self.stop(timeout=5)
                raise
        return self

    @property
    def running(self) -> bool:
        """Whether the bus was started and not stopped since."""
        return self._started

    def stop(self, timeout: float = 30.0) -> None:
        """Stop consuming: in-flight messages finish (up to ``timeout``), the rest stay on the broker."""
        with self._lock:
            consumers, self._consumers = self._consumers, []
            self._started = False
        deadline = time.monotonic() + timeout
        for consumer in consumers:
            consumer.stop(max(deadline - time.monotonic(), 0.0))
        self._backend.close()
        self._loop.close()

    def run(self) -> None:
        """Start and block until SIGINT or SIGTERM, then stop cleanly."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("%s: signal %d received, stopping", self.service, signum)
            stop.set()

        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, on_signal)
        try:
            self.start()
            while not stop.wait(0.5):
                pass
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def __enter__(self) -> Bus:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- testing & inspection ---------------------------------------------------

    def testing(self, *, raise_errors: bool = True) -> Testing:
        """A synchronous in-memory session: ``with bus.testing() as t: ...``.

        Inside it, ``publish`` returns after every handler it triggers (and
        the cascade they publish) has run. See :class:`eventbus.Testing`.
        """
        from eventbus.testing import Testing

        return Testing(self, raise_errors=raise_errors)

    def _swap_backend(self, backend: Backend) -> Backend:
        with self._lock:
            previous, self._backend = self._backend, backend
        return previous

    def dead_letters(self, limit: int = 100) -> list[Envelope]:
        """Up to ``limit`` dead letters of each of this service's queues (not removed)."""
        found: list[Envelope] = []
        for queue in self.topology().queues:
            found.extend(self._backend.dead_letters(queue.name, limit))
        return found

    def replay_dead_letters(
        self, queue: str | None = None, *, limit: int | None = None, message_ids: Collection[str] | None = None
    ) -> list[str]:
        """Move dead letters back to their queue to be handled again; return their message ids.

        ``queue`` is one of this service's queues (default: each of them);
        at most ``limit`` per queue, oldest first, and only those whose id is
        in ``message_ids`` when given. A replayed message keeps its id, starts
        again at attempt 1 and loses its ``error-*`` headers.
        """
        tools = self._dead_letter_tools("replay")
        moved: list[str] = []
        for name in self._queue_names(queue):
            moved.extend(tools.replay_dead_letters(name, limit=limit, message_ids=message_ids))
        return moved

    def purge_dead_letters(self, queue: str | None = None) -> int:
        """Delete the dead letters of ``queue`` (default: of each of this service's queues); return how many."""
        tools = self._dead_letter_tools("purge")
        return sum(tools.purge_dead_letters(name) for name in self._queue_names(queue))

    def _queue_names(self, queue: str | None) -> list[str]:
        names = [plan.name for plan in self.topology().queues]
        if queue is None:
            return names
        if queue not in names:
            raise ConfigurationError(
                f"{queue!r} is not a queue of service {self.service!r}; its queues: {', '.join(names) or 'none'}"
            )
        return [queue]

    def _dead_letter_tools(self, action: str) -> DeadLetterTools:
        if not isinstance(self._backend, DeadLetterTools):
            raise ConfigurationError(
                f"the {type(self._backend).__name__} of {self!r} cannot {action} dead letters "
                "(it does not implement eventbus.backends.base.DeadLetterTools)"
            )
        return self._backend

    def __repr__(self) -> str:
        return f"<Bus service={self.service!r} url={redact_url(self.url)!r}>"


def _import_tree(target: str | ModuleType) -> list[str]:
    """Import a module, or a package and all its submodules; return their names."""
    module = importlib.import_module(target) if isinstance(target, str) else target
    names = [module.__name__]
    if hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{module.__name__}."):
            importlib.import_module(info.name)
            names.append(info.name)
    return names


def _bind_methods(instance: object) -> list[HandlerSpec]:
    cls = type(instance)
    if isinstance(instance, type):
        raise DeclarationError(
            f"include({instance.__qualname__}) got a class; pass an instance so its handlers get their dependencies"
        )
    bound: dict[tuple[str, tuple[type[Any], ...]], HandlerSpec] = {}
    for klass in reversed(cls.__mro__):
        for attr in vars(klass).values():
            for spec in getattr(attr, HANDLERS_ATTR, ()):
                if spec.is_method:
                    method = spec.bind(instance)
                    bound[(method.name, method.types)] = method
    if not bound:
        raise DeclarationError(
            f"include() got {cls.__qualname__}, which has no @subscribe methods; "
            "pass a module name, a module, or an object with @subscribe methods"
        )
    return list(bound.values())
