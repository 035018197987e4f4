"""Retry policy: how long to wait before the next attempt of a failed message."""

from __future__ import annotations

import random
from typing import Literal

import attrs

#: What a failing handler asks the bus to do with the message.
#: ``retry``: redeliver after a backoff, then dead-letter after the last attempt.
#: ``dead_letter``: move the message to the dead-letter queue at once.
#: ``drop``: acknowledge and forget it (log the error only).
OnFailure = Literal["retry", "dead_letter", "drop"]

ON_FAILURE_CHOICES: tuple[str, ...] = ("retry", "dead_letter", "drop")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"Backoff.{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class Backoff:
    """Exponential backoff with jitter.

    The delay before attempt ``n + 1`` (after attempt ``n`` failed) is
    ``initial * factor ** (n - 1)``, capped at ``max`` and spread by
    ``± jitter`` (a fraction) so that messages that failed together do not
    come back together.
    """

    initial: float = attrs.field(default=1.0, validator=_positive)
    factor: float = attrs.field(default=3.0, validator=_positive)
    max: float = attrs.field(default=600.0, validator=_positive)
    jitter: float = attrs.field(default=0.1, validator=_positive)

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after ``failed_attempt`` (1-based) failed."""
        exponent = max(failed_attempt - 1, 0)
        base = min(self.initial * self.factor**exponent, self.max)
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(base, 0.0)

    @classmethod
    def of(cls, value: float | Backoff) -> Backoff:
        """Accept a plain number of seconds (the first delay) or a ``Backoff``."""
        if isinstance(value, Backoff):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"backoff must be a number of seconds or a Backoff, got {value!r}")
        return cls(initial=float(value))
