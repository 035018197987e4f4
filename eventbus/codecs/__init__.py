"""Serializers turn message objects into bytes and back.

A serializer is anything with a ``name``, a ``content_type`` and
``encode``/``decode`` methods (see :class:`Serializer`). The built-in ones
are ``json`` (the default, safe) and ``pickle`` (opt-in: it runs code while
decoding).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

from eventbus.codecs.json import JsonSerializer
from eventbus.codecs.pickle import PickleSerializer

T = TypeVar("T")

__all__ = ["JsonSerializer", "PickleSerializer", "Serializer", "builtin_serializers", "executes_code"]


@runtime_checkable
class Serializer(Protocol):
    """The serializer protocol.

    ``name`` is what ``@message(serializer=...)`` refers to and what travels
    in the ``serializer`` header; ``content_type`` travels in the
    ``content-type`` header. ``decode`` must raise (any exception) on input it
    cannot turn into an instance of ``cls``: the bus dead-letters such
    messages. A serializer that can run code while decoding sets
    ``executes_code = True`` and is only used by a Bus created with
    ``allow_pickle=True``.
    """

    name: str
    content_type: str

    def encode(self, message: Any, cls: type[Any]) -> bytes:
        """Return the body bytes of ``message``, an instance of ``cls``."""
        ...

    def decode(self, data: bytes, cls: type[T]) -> T:
        """Return an instance of ``cls`` read from ``data``."""
        ...


def executes_code(serializer: Serializer) -> bool:
    """Whether decoding with ``serializer`` may run arbitrary code."""
    return bool(getattr(serializer, "executes_code", False))


def builtin_serializers() -> dict[str, Serializer]:
    """The serializers every registry starts with."""
    return {"json": JsonSerializer(), "pickle": PickleSerializer()}
