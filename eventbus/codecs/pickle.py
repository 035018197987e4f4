"""Pickle bodies: any Python object, but decoding runs code.

Only a Bus created with ``allow_pickle=True`` will encode or decode with it,
and only for producers you trust completely.
"""

from __future__ import annotations

import pickle
from typing import Any, TypeVar

T = TypeVar("T")


class PickleSerializer:
    """Pickle (protocol 5). Opt-in only: see ``Bus(allow_pickle=True)``."""

    name = "pickle"
    content_type = "application/x-python-pickle"
    executes_code = True

    def encode(self, message: Any, cls: type[Any]) -> bytes:
        """Pickle ``message``."""
        return pickle.dumps(message, protocol=5)

    def decode(self, data: bytes, cls: type[T]) -> T:
        """Unpickle ``data`` and check that it is a ``cls``."""
        value = pickle.loads(data)  # noqa: S301 - callers opted in explicitly
        if not isinstance(value, cls):
            raise TypeError(f"pickled body is a {type(value).__name__}, expected {cls.__name__}")
        return value
