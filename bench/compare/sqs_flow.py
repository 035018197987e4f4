"""Flow 3: SNS/SQS on a local server (moto_server), one message per API call vs eventbus's batches.

The one-per-call side is Melange's way: ``sns.publish`` per message, and one thread looping on
``receive_message(MaxNumberOfMessages=1)`` + handle + ``delete_message``. eventbus publishes with
``publish_many`` (PublishBatch, 10 per call) and consumes with receives of 10, 4 handler threads and
DeleteMessageBatch. Both run end to end (consumers running while publishing) on queues of their own;
the server runs on 127.0.0.1, with no network latency (which would widen the gap). The code is
:mod:`bench/sqs.py`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqs import local_server, run_eventbus, run_one_per_call

from .common import Case, Settings

FLOW = "sqs"
ONE_PER_CALL = "one message per call (Melange's way)"
EVENTBUS = "eventbus, batches of 10, 4 handler threads"
TITLE = "SNS/SQS on a local server, end to end: publish, receive, handle, delete"


@contextmanager
def cases(settings: Settings) -> Iterator[list[Case]]:
    n = settings.sqs_messages
    with local_server(None) as endpoint:

        def one_per_call() -> float:
            return run_one_per_call(endpoint, n, backlog=False).total_seconds

        def batched() -> float:
            return run_eventbus(endpoint, n, backlog=False, concurrency=4).total_seconds

        yield [
            Case(FLOW, ONE_PER_CALL, n, one_per_call, reference=True),
            Case(FLOW, EVENTBUS, n, batched),
        ]
