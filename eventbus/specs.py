"""What the decorators record: message specs and handler specs.

Specs are plain, immutable data. Building one validates it, so a bad
declaration fails at import time with a message that names the class or
function and says how to fix it.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import attrs

from eventbus.errors import DeclarationError
from eventbus.retry import ON_FAILURE_CHOICES, Backoff, OnFailure

#: Attribute under which ``@message`` stores the spec on the class.
MESSAGE_ATTR = "__eventbus_message__"
#: Attribute under which ``@subscribe`` stores specs on the function.
HANDLERS_ATTR = "__eventbus_handlers__"

# Topic and queue names must be valid on every backend: SNS and SQS allow
# only letters, digits, '-' and '_' (plus a '.fifo' suffix), 256/80 chars.
_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.fifo)?$")
# A manifest is an AMQP routing key and an SNS filter value: no wildcards.
_MANIFEST = re.compile(r"^[A-Za-z0-9_.:-]+$")
MAX_TOPIC_LENGTH = 200
MAX_QUEUE_LENGTH = 70  # leaves room for the '-dlq.fifo' suffix within SQS's 80


def check_resource_name(kind: str, name: object, owner: str, max_length: int) -> str:
    """Validate a topic, queue or service name; raise a DeclarationError naming ``owner``."""
    if not isinstance(name, str) or not name:
        raise DeclarationError(f"{owner}: the {kind} name must be a non-empty string, got {name!r}")
    if len(name) > max_length:
        raise DeclarationError(f"{owner}: the {kind} name {name!r} is longer than {max_length} characters")
    if not _RESOURCE_NAME.match(name):
        raise DeclarationError(
            f"{owner}: the {kind} name {name!r} may only contain letters, digits, '-' and '_' "
            "(and end in '.fifo' for a FIFO topic or queue), so that it is valid on every backend"
        )
    return name


def is_fifo(name: str) -> bool:
    """Whether a topic or queue name marks a FIFO resource."""
    return name.endswith(".fifo")


def _bound_to(fn: Callable[..., Any]) -> object | None:
    owner = getattr(fn, "__self__", None)
    return None if owner is None or inspect.ismodule(owner) else owner


def callable_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a function or bound method: the handler's stable name."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    owner = _bound_to(target)
    module = getattr(target, "__module__", None) or (type(owner).__module__ if owner is not None else "?")
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{qualname}"


def _is_class_message(cls: type[Any]) -> bool:
    return attrs.has(cls) or hasattr(cls, "__dataclass_fields__")


def _field_names(cls: type[Any]) -> set[str]:
    if attrs.has(cls):
        return {a.name for a in attrs.fields(cls)}
    return set(getattr(cls, "__dataclass_fields__", {}))


@attrs.frozen
class MessageSpec:
    """What ``@message`` knows about a message type."""

    cls: type[Any]
    topic: str
    name: str
    version: int | None = None
    serializer: str | None = None
    group_by: str | None = None

    @property
    def manifest(self) -> str:
        """The wire identity: the name, plus ``.v<version>`` when versioned."""
        return self.name if self.version is None else f"{self.name}.v{self.version}"

    @classmethod
    def build(
        cls,
        target: Any,
        *,
        topic: object,
        name: object,
        version: object,
        serializer: object,
        group_by: object,
    ) -> MessageSpec:
        """Validate the arguments of ``@message`` for class ``target``."""
        if not isinstance(target, type):
            raise DeclarationError(f"@message decorates classes, not {target!r}")
        owner = f"@message on {target.__qualname__}"
        if not _is_class_message(target):
            raise DeclarationError(
                f"{owner}: {target.__qualname__} must be an attrs class or a dataclass. "
                "Put @message above @attrs.frozen / @dataclass, so that it sees the finished class."
            )
        if MESSAGE_ATTR in target.__dict__:
            raise DeclarationError(f"{owner}: the class is already declared as a message")
        topic = check_resource_name("topic", topic, owner, MAX_TOPIC_LENGTH)
        if name is None:
            name = target.__name__
        if not isinstance(name, str) or not _MANIFEST.match(name):
            raise DeclarationError(
                f"{owner}: name={name!r} must be a non-empty string of letters, digits, '_', '.', ':' or '-'"
            )
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise DeclarationError(f"{owner}: version={version!r} must be a positive integer or None")
        if serializer is not None and (not isinstance(serializer, str) or not serializer):
            raise DeclarationError(f"{owner}: serializer={serializer!r} must be the name of a serializer")
        if group_by is not None:
            if not is_fifo(topic):
                raise DeclarationError(
                    f"{owner}: group_by={group_by!r} needs a FIFO topic; name the topic {topic + '.fifo'!r}"
                )
            if group_by not in _field_names(target):
                raise DeclarationError(f"{owner}: group_by={group_by!r} is not a field of {target.__qualname__}")
        return cls(target, topic, name, version, serializer, group_by)


def message_spec(cls: type[Any]) -> MessageSpec | None:
    """The spec ``@message`` put on ``cls`` itself (not inherited from a base)."""
    spec = cls.__dict__.get(MESSAGE_ATTR) if isinstance(cls, type) else None
    return spec if isinstance(spec, MessageSpec) else None


def _takes_context(fn: Callable[..., Any], owner: str, *, skip_self: bool) -> bool:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise DeclarationError(f"{owner}: cannot read the signature of {fn!r}: {exc}") from exc
    params = list(signature.parameters.values())
    if skip_self and params:
        params = params[1:]
    kinds = inspect.Parameter
    positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    variadic = any(p.kind is kinds.VAR_POSITIONAL for p in params)
    keyword_only = [p.name for p in params if p.kind is kinds.KEYWORD_ONLY and p.default is p.empty]
    shape = "a handler is called as handler(event) or handler(event, ctx)"
    if keyword_only:
        raise DeclarationError(f"{owner}: keyword-only parameters {keyword_only} have no default; {shape}")
    if len(required) > 2:
        names = [p.name for p in required]
        raise DeclarationError(f"{owner}: it requires {len(required)} arguments {names}; {shape}")
    if not positional and not variadic:
        raise DeclarationError(f"{owner}: it takes no positional argument; {shape}")
    return len(positional) >= 2 or variadic


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def defined_in_class(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` was written inside a class body (a method to bind later)."""
    if _bound_to(fn) is not None:
        return False  # already bound: a handler as it is
    qualname = getattr(fn, "__qualname__", "")
    if "." not in qualname:
        return False
    return not qualname.rsplit(".", 1)[0].endswith("<locals>")


@attrs.frozen
class HandlerSpec:
    """What ``@subscribe`` knows about a handler."""

    fn: Callable[..., Any]
    types: tuple[type[Any], ...]
    name: str
    retries: int
    backoff: Backoff
    queue: str | None
    on_failure: OnFailure
    takes_context: bool
    is_async: bool
    is_method: bool = False

    @property
    def max_attempts(self) -> int:
        """First delivery plus ``retries``."""
        return self.retries + 1

    @classmethod
    def build(
        cls,
        fn: Any,
        types: tuple[Any, ...],
        *,
        retries: object,
        backoff: object,
        queue: object,
        on_failure: object,
    ) -> HandlerSpec:
        """Validate the arguments of ``@subscribe`` for handler ``fn``."""
        if not callable(fn):
            raise DeclarationError(f"@subscribe decorates functions, not {fn!r}")
        name = callable_name(fn)
        owner = f"@subscribe on {name}"
        if not types:
            raise DeclarationError(f"{owner}: name at least one message type, e.g. @subscribe(OrderPlaced)")
        for tp in types:
            if message_spec(tp) is None:
                what = tp.__qualname__ if isinstance(tp, type) else repr(tp)
                raise DeclarationError(
                    f"{owner}: {what} is not a message type; declare it with @message(topic=...) "
                    "before subscribing to it"
                )
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise DeclarationError(f"{owner}: retries={retries!r} must be an integer >= 0")
        try:
            policy = Backoff.of(backoff)  # type: ignore[arg-type]  # checked at run time
        except (TypeError, ValueError) as exc:
            raise DeclarationError(f"{owner}: {exc}") from exc
        if queue is not None:
            queue = check_resource_name("queue", queue, owner, MAX_QUEUE_LENGTH)
        if on_failure not in ON_FAILURE_CHOICES:
            raise DeclarationError(f"{owner}: on_failure={on_failure!r} must be one of {list(ON_FAILURE_CHOICES)}")
        method = defined_in_class(fn)
        return cls(
            fn=fn,
            types=tuple(types),
            name=name,
            retries=retries,
            backoff=policy,
            queue=queue,
            on_failure=on_failure,  # type: ignore[arg-type]  # checked above
            takes_context=_takes_context(fn, owner, skip_self=method),
            is_async=_is_async(fn),
            is_method=method,
        )

    def bind(self, instance: object) -> HandlerSpec:
        """The spec of this method bound to ``instance`` (for class-based handlers)."""
        bound = getattr(instance, self.fn.__name__)
        owner = f"{type(instance).__module__}.{type(instance).__qualname__}"
        return attrs.evolve(
            self,
            fn=bound,
            name=f"{owner}.{self.fn.__name__}",
            takes_context=_takes_context(bound, f"@subscribe on {owner}.{self.fn.__name__}", skip_self=False),
            is_method=False,
        )
