"""Exceptions raised by eventbus.

Every error a user can cause derives from :class:`EventbusError`, so
``except EventbusError`` catches all of them.
"""

from __future__ import annotations


class EventbusError(Exception):
    """Base class of every error eventbus raises on purpose."""


class DeclarationError(EventbusError, TypeError):
    """A ``@message`` or ``@subscribe`` declaration is wrong.

    Raised at import time (when the decorator runs) or when a ``Bus`` is
    built; the message names the class or handler and how to fix it.
    """


class ConfigurationError(EventbusError, ValueError):
    """A ``Bus`` or backend was configured in a way that cannot work."""


class SerializationError(EventbusError):
    """A message could not be encoded for publishing."""


class PublishError(EventbusError):
    """The broker did not confirm a publish; the message may not be stored.

    A publish either returns after the broker accepted the message or raises
    this error: it is never dropped silently.
    """


class TopologyConflictError(EventbusError):
    """Provisioning found an existing resource whose settings differ from the plan."""


class DecodeError(EventbusError):
    """A delivery could not be turned into a message (poison).

    ``reason`` is a short machine-readable tag that ends up in the
    dead-letter headers (``unknown-manifest``, ``undecodable`` ...).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
