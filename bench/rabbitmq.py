"""RabbitMQ throughput: raw pika next to eventbus, measured in one run.

    .venv/bin/python bench/rabbitmq.py [--messages 20000] [--rounds 1] [--url amqp://...]

Every phase sends the same ~200-byte persistent messages through a topic
exchange into a durable classic queue on the same broker:

- raw pika, unconfirmed: BlockingConnection.basic_publish, no confirms;
- raw pika, confirmed: BlockingConnection with confirm_delivery (one round trip each);
- eventbus publish_many: confirmed, pipelined (one call for all the messages);
- eventbus publish from 8 threads: confirmed, each call waits for its own confirm;
- eventbus publish from 1 thread: confirmed, one message at a time (a round trip each);
- eventbus end to end: publish_many to a running consumer (4 threads, prefetch 256),
  until the handler ran for every message (decode, handle, ack).

Ratios are against raw unconfirmed publishing in the same round; with --rounds N the
table shows medians. "client CPU" is this process's CPU time per message (all threads):
it does not depend on the broker or on the machine's load the way msg/s does.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
import uuid
from collections.abc import Callable

import attrs
import pika

from eventbus import Bus, Registry, wait_until

BODY_FILL = "x" * 183  # with the JSON around it, a body of about 200 bytes
SETTLE = 2.0
BASELINE = "raw pika, unconfirmed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--rounds", type=int, default=1, help="run every phase this often; the table shows medians")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n, url = args.messages, args.url
    uid = uuid.uuid4().hex[:8]
    topic, service = f"bench-{uid}", f"bench-{uid}"

    registry = Registry()

    @registry.message(topic=topic)
    @attrs.frozen
    class Sample:
        n: int
        fill: str

    handled = 0
    lock = threading.Lock()

    @registry.subscribe(Sample)
    def count(sample: Sample) -> None:
        nonlocal handled
        with lock:
            handled += 1

    messages = [Sample(i, BODY_FILL) for i in range(n)]
    bus_url = f"{url}{'&' if '?' in url else '?'}connection_name=eventbus-bench-{uid}&retry_delays=1"
    bus = Bus(service=service, url=bus_url, registry=registry)
    bus.provision()  # the exchange, the queue, its binding
    body = bus._marshaller.encode(messages[0])[1].body
    admin = pika.BlockingConnection(pika.URLParameters(url))
    channel = admin.channel()
    rounds: dict[str, list[tuple[float, float]]] = {}  # phase -> (msg/s, client CPU µs per message) per round

    def measure(name: str, run: Callable[[], None], before: Callable[[], object] = lambda: None) -> None:
        channel.queue_purge(service)
        time.sleep(SETTLE)  # let the broker finish writing and purging the previous phase's messages
        before()
        cpu = time.process_time()
        start = time.perf_counter()
        run()
        rate = n / (time.perf_counter() - start)
        cpu_us = (time.process_time() - cpu) / n * 1e6
        rounds.setdefault(name, []).append((rate, cpu_us))
        print(f"  {name}: {rate:,.0f} msg/s, {cpu_us:.0f} µs of client CPU per message", flush=True)

    def raw(confirm: bool) -> Callable[[], None]:
        def run() -> None:
            connection = pika.BlockingConnection(pika.URLParameters(url))
            ch = connection.channel()
            if confirm:
                ch.confirm_delivery()
            properties = pika.BasicProperties(delivery_mode=2, type="Sample", content_type="application/json")
            for _ in range(n):
                ch.basic_publish(topic, "Sample", body, properties)
            connection.close()  # waits until everything is written

        return run

    def threads(count: int) -> Callable[[], None]:
        def run() -> None:
            share = [messages[i::count] for i in range(count)]
            workers = [threading.Thread(target=lambda part=part: [bus.publish(m) for m in part]) for part in share]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()

        return run

    consumer = Bus(service=service, url=bus_url, registry=registry, concurrency=4, prefetch=256)

    def start_consumer() -> None:
        nonlocal handled
        handled = 0
        consumer.start()

    def end_to_end() -> None:
        bus.publish_many(messages)  # the consumer (started before the clock) takes them as they arrive
        wait_until(lambda: handled >= n, 300, interval=0.005)

    print(f"{n:,} messages of {len(body)} bytes, persistent, to a durable classic queue; {args.rounds} round(s)")
    bus.publish(messages[0])  # connect before timing
    try:
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}")
            measure(BASELINE, raw(confirm=False))
            measure("raw pika, confirmed (blocking)", raw(confirm=True))
            measure("eventbus publish_many (confirmed)", lambda: bus.publish_many(messages))
            measure("eventbus publish, 8 threads (confirmed)", threads(8))
            measure("eventbus publish, 1 thread (confirmed)", threads(1))
            measure("eventbus end to end (publish, handle, ack)", end_to_end, before=start_consumer)
            consumer.stop()
    finally:
        consumer.stop()
        bus.stop()
        channel.queue_delete(service)
        for queue in (f"{service}-dlq", f"{service}-retry-1s"):
            channel.queue_delete(queue)
        channel.exchange_delete(topic)
        admin.close()

    # Each round measures every phase next to the baseline: compare within rounds, then take medians.
    baseline = [rate for rate, _ in rounds[BASELINE]]
    width = max(len(name) for name in rounds)
    print()
    print(f"| {'phase':<{width}} | {'msg/s':>8} | {'vs raw unconfirmed':>18} | {'client CPU µs/msg':>17} |")
    print(f"|{'-' * (width + 2)}|{'-' * 10}|{'-' * 20}|{'-' * 19}|")
    for name, figures in rounds.items():
        rate = statistics.median(r for r, _ in figures)
        ratio = statistics.median(r / base for (r, _), base in zip(figures, baseline, strict=True))
        cpu_us = statistics.median(c for _, c in figures)
        print(f"| {name:<{width}} | {rate:>8,.0f} | {ratio:>17.2f}x | {cpu_us:>17.0f} |")
    print("\nmedians over the rounds; the ratio is taken within each round, against that round's raw unconfirmed run")


if __name__ == "__main__":
    main()
