"""The registry: which message types and handlers exist.

``@message`` and ``@subscribe`` record into a registry: the module-level
default one, or an explicit ``Registry()`` for isolation (tests, several
applications in one process). A registry also holds the serializers by
name and the base-class serializer bindings.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from eventbus.codecs import Serializer, builtin_serializers
from eventbus.errors import ConfigurationError, DeclarationError
from eventbus.retry import Backoff, OnFailure
from eventbus.specs import HANDLERS_ATTR, MESSAGE_ATTR, HandlerSpec, MessageSpec, message_spec

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_RETRIES = 5


def _same_definition(a: type[Any], b: type[Any]) -> bool:
    """Whether two classes are the same source definition (a module reloaded)."""
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _location(fn: Callable[..., Any]) -> tuple[str, int] | None:
    """Where a function was written; a reloaded module gives the same place again."""
    code = getattr(fn, "__code__", None)
    return None if code is None else (code.co_filename, code.co_firstlineno)


def _flatten(types: tuple[Any, ...]) -> tuple[Any, ...]:
    flat: list[Any] = []
    for item in types:
        flat.extend(item if isinstance(item, (tuple, list)) else [item])
    return tuple(flat)


class Registry:
    """Message types, handlers and serializers known to one application."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._messages: dict[str, MessageSpec] = {}
        self._handlers: dict[tuple[str, str], HandlerSpec] = {}
        self._serializers: dict[str, Serializer] = builtin_serializers()
        self._bindings: dict[type[Any], str] = {}
        #: Grows with every change, so that a Bus can tell when to look again.
        self.generation = 0

    # -- declaring --------------------------------------------------------

    def message(
        self,
        topic: str,
        *,
        serializer: str | None = None,
        name: str | None = None,
        version: int | None = None,
        group_by: str | None = None,
    ) -> Callable[[C], C]:
        """Declare a message type (class decorator).

        ``topic`` is where instances are published. The manifest (wire name)
        is ``name`` or the class name, plus ``.v<version>`` when a version is
        given. ``serializer`` names a registered serializer; by default the
        registry's base-class bindings decide, else the Bus default
        (``json``). ``group_by`` names the field whose value orders messages
        on a FIFO topic (a topic whose name ends in ``.fifo``).
        """

        def declare(cls: C) -> C:
            spec = MessageSpec.build(
                cls, topic=topic, name=name, version=version, serializer=serializer, group_by=group_by
            )
            with self._lock:
                existing = self._messages.get(spec.manifest)
                if existing is not None and not _same_definition(existing.cls, cls):
                    raise DeclarationError(
                        f"@message on {cls.__qualname__}: manifest {spec.manifest!r} is already used by "
                        f"{existing.cls.__module__}.{existing.cls.__qualname__}; give one of them another "
                        "name= or a version="
                    )
                setattr(cls, MESSAGE_ATTR, spec)
                self._messages[spec.manifest] = spec
                self.generation += 1
            return cls

        return declare

    def subscribe(
        self,
        *types: type[Any] | tuple[type[Any], ...],
        retries: int = DEFAULT_RETRIES,
        backoff: float | Backoff = 1.0,
        queue: str | None = None,
        on_failure: OnFailure = "retry",
    ) -> Callable[[F], F]:
        """Declare a handler for one or more message types (function decorator).

        The handler is called as ``handler(event)`` or ``handler(event, ctx)``
        and may be ``async def``. ``retries`` and ``backoff`` (seconds, or a
        :class:`Backoff`) set the retry policy; ``on_failure`` chooses what a
        failure means (``retry``, ``dead_letter`` at once, or ``drop``: ack
        and forget); ``queue`` gives the handler a queue of its own instead of
        its service's. Decorators stack to subscribe to several types.
        Methods are recorded and bound later by ``bus.include(instance)``.
        The function is returned unchanged.
        """
        flat = _flatten(types)

        def declare(fn: F) -> F:
            spec = HandlerSpec.build(fn, flat, retries=retries, backoff=backoff, queue=queue, on_failure=on_failure)
            recorded: list[HandlerSpec] = list(getattr(fn, HANDLERS_ATTR, ()))
            for tp in spec.types:
                if any(tp in other.types for other in recorded):
                    raise DeclarationError(f"@subscribe on {spec.name}: it already subscribes to {tp.__qualname__}")
            recorded.append(spec)
            # Bound methods and builtins take no attributes: they are registered below, nothing to bind later.
            with contextlib.suppress(AttributeError):
                setattr(fn, HANDLERS_ATTR, tuple(recorded))
            if not spec.is_method:
                self._add_handler(spec)
            return fn

        return declare

    def _add_handler(self, spec: HandlerSpec) -> None:
        with self._lock:
            for tp in spec.types:
                manifest = message_spec(tp).manifest  # type: ignore[union-attr]
                existing = self._handlers.get((spec.name, manifest))
                if existing is not None and _location(existing.fn) != _location(spec.fn):
                    raise DeclarationError(
                        f"@subscribe on {spec.name}: another handler of {tp.__qualname__} has the same name; "
                        "give each handler its own def (the name keys retries, dead letters and de-duplication)"
                    )
                self._handlers[(spec.name, manifest)] = spec
            self.generation += 1

    # -- serializers ------------------------------------------------------

    def add_serializer(self, serializer: Serializer, *, replace: bool = False) -> None:
        """Register a serializer under its ``name`` (``replace=True`` to override one)."""
        for attr in ("name", "content_type", "encode", "decode"):
            if not hasattr(serializer, attr):
                raise ConfigurationError(f"{serializer!r} is not a serializer: it has no {attr!r}")
        with self._lock:
            current = self._serializers.get(serializer.name)
            if current is not None and current is not serializer and not replace:
                raise ConfigurationError(
                    f"a serializer named {serializer.name!r} is already registered; pass replace=True to override it"
                )
            self._serializers[serializer.name] = serializer
            self.generation += 1

    def bind_serializer(self, base: type[Any], serializer: str) -> None:
        """Use ``serializer`` for every message type that subclasses ``base``.

        A type's own ``@message(serializer=...)`` wins; among bindings, the
        most specific base class wins.
        """
        if not isinstance(base, type):
            raise ConfigurationError(f"bind_serializer needs a class, got {base!r}")
        with self._lock:
            self._bindings[base] = serializer
            self.generation += 1

    def get_serializer(self, name: str) -> Serializer:
        """The serializer registered as ``name``."""
        try:
            return self._serializers[name]
        except KeyError:
            known = ", ".join(sorted(self._serializers))
            raise ConfigurationError(
                f"no serializer named {name!r} (known: {known}); register it with registry.add_serializer()"
            ) from None

    def serializer_name(self, cls: type[Any], default: str) -> str:
        """The serializer name ``cls`` uses: its own, else a binding, else ``default``."""
        spec = message_spec(cls)
        if spec is not None and spec.serializer is not None:
            return spec.serializer
        for base in cls.__mro__:
            if base in self._bindings:
                return self._bindings[base]
        return default

    def serializers(self) -> dict[str, Serializer]:
        """A copy of the serializers by name."""
        with self._lock:
            return dict(self._serializers)

    # -- reading ----------------------------------------------------------

    def messages(self) -> list[MessageSpec]:
        """Every declared message type."""
        with self._lock:
            return list(self._messages.values())

    def handlers(self) -> list[HandlerSpec]:
        """Every registered (module-level) handler."""
        with self._lock:
            return list(dict.fromkeys(self._handlers.values()))

    def find(self, manifest: str) -> MessageSpec | None:
        """The message type with this manifest, if any."""
        return self._messages.get(manifest)


#: The registry that the module-level ``message`` and ``subscribe`` use.
default_registry = Registry()

message = default_registry.message
subscribe = default_registry.subscribe
