"""What the demo prints, and the counts behind its summary table."""

from __future__ import annotations

import json
import threading
from collections import Counter

from eventbus import Context

_lock = threading.Lock()
counts: Counter[str] = Counter()


def say(ctx: Context, service: str, text: str) -> None:
    """Print one step of a flow, labelled with the end of its correlation id."""
    retry = f"  (attempt {ctx.attempt})" if ctx.attempt > 1 else ""
    with _lock:
        print(f"  flow {ctx.correlation_id[-4:]}  {service:<9} {text}{retry}", flush=True)


def count(what: str) -> None:
    """Add one to a counter of the summary."""
    with _lock:
        counts[what] += 1


def report() -> str:
    """The counters as one line a parent process can read back."""
    with _lock:
        return "COUNTS " + json.dumps(counts)
