"""What the demo prints, and the counts behind its summary table."""

from __future__ import annotations

import threading
from collections import Counter

from eventbus import Context

_lock = threading.Lock()
counts: Counter[str] = Counter()
short_ids: dict[str, str] = {}


def flow(ctx: Context) -> str:
    """A short, stable name for the correlation id of a flow: #1, #2, ..."""
    with _lock:
        return short_ids.setdefault(ctx.correlation_id, f"#{len(short_ids) + 1}")


def say(ctx: Context, service: str, text: str) -> None:
    """Print one step of a flow."""
    retry = f"  (attempt {ctx.attempt})" if ctx.attempt > 1 else ""
    with _lock:
        print(f"  flow {short_ids.get(ctx.correlation_id) or '?':>3}  {service:<9} {text}{retry}", flush=True)


def count(what: str) -> None:
    """Add one to a counter of the summary."""
    with _lock:
        counts[what] += 1
