"""Flow 3: SNS/SQS on a local server (moto_server), one message per API call vs eventbus's batches.

The one-per-call side is Melange's way: ``sns.publish`` per message, and one thread looping on
``receive_message(MaxNumberOfMessages=1)`` + handle + ``delete_message``. eventbus publishes with
``publish_many`` (PublishBatch, 10 per call) and consumes with receives of 10, 4 handler threads and
DeleteMessageBatch. Both run end to end (consumers running while publishing) on queues of their own.
The code is ``bench/sqs.py``'s.

The pair runs twice: straight to the server on 127.0.0.1, where moto's own work per message bounds
the gain (it scans the whole queue for every message it receives, so a fast publisher that builds a
backlog pays more per message), and through a proxy adding 10 ms to every call, as the network to
AWS would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqs import local_server, network_delay, run_eventbus, run_one_per_call

from .common import Case, Settings, Timing

FLOW = "sqs"
TITLE = "SNS/SQS on a local server, end to end: publish, receive, handle, delete"
RTT_FLOW = "sqs-rtt"
RTT = 0.010
RTT_TITLE = f"SNS/SQS as flow 3, through a proxy adding {RTT * 1000:g} ms per call (an emulated network round trip)"
ONE_PER_CALL = "one message per call (Melange's way)"
EVENTBUS = "eventbus, batches of 10, 4 handler threads"


@contextmanager
def cases(settings: Settings) -> Iterator[list[Case]]:
    n = settings.sqs_messages
    with local_server(None) as endpoint, network_delay(endpoint, RTT) as distant:

        def pair(flow: str, url: str) -> list[Case]:
            # bench/sqs.py times the wall clock only; CPU here would count provisioning too.
            def one_per_call() -> Timing:
                return Timing(run_one_per_call(url, n, backlog=False).total_seconds, None)

            def batched() -> Timing:
                return Timing(run_eventbus(url, n, backlog=False, concurrency=4).total_seconds, None)

            return [
                Case(flow, ONE_PER_CALL, n, one_per_call, reference=True),
                Case(flow, EVENTBUS, n, batched),
            ]

        yield pair(FLOW, endpoint) + pair(RTT_FLOW, distant)
