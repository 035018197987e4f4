"""A consumer process for the fault suite: handles Job messages until signalled.

Configured by environment variables (set by ``tests/faults/harness.py``):
EVENTBUS_URL, FAULT_NAMESPACE, FAULT_STATE (a redis URL where results go),
FAULT_LEASE (the de-duplication lease, seconds), FAULT_DEDUP (the de-duplication
cache's redis URL; default FAULT_STATE).

Results, in the FAULT_STATE redis under the namespace:
- ``<ns>:runs``        hash message id -> times the handler body ran to its end
- ``<ns>:completions`` hash message id -> times the bus marked the handler done
  (written in the same transaction as the done mark, so it is exact)
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time

import attrs
import redis

from eventbus import Bus, PublishError, RedisDedupCache, Registry

NAMESPACE = os.environ["FAULT_NAMESPACE"]
STATE = redis.Redis.from_url(os.environ["FAULT_STATE"])
SEPARATE_CACHE = bool(os.environ.get("FAULT_DEDUP"))

registry = Registry()


@registry.message(topic=f"{NAMESPACE}-jobs", name="Job")
@attrs.frozen
class Job:
    n: int


class CountingCache(RedisDedupCache):
    """The Redis cache, counting each done mark atomically with it."""

    def done(self, key: str) -> None:
        message_id = key.rsplit(":", 1)[1]
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.prefix + key, b"done", px=int(self.ttl * 1000))
            pipe.hincrby(f"{NAMESPACE}:completions", message_id, 1)
            pipe.execute()
        self._tokens().pop(key, None)
        if SEPARATE_CACHE:  # the cache lives on another server: count in the results store too
            STATE.hincrby(f"{NAMESPACE}:completions", message_id, 1)


@registry.subscribe(Job, retries=50, backoff=0.05)
def work(event: Job, ctx: object) -> None:
    time.sleep(random.uniform(0, 0.002))
    STATE.hincrby(f"{NAMESPACE}:runs", ctx.message_id, 1)  # type: ignore[attr-defined]


def make_bus() -> Bus:
    cache = CountingCache(
        os.environ.get("FAULT_DEDUP") or os.environ["FAULT_STATE"],
        prefix=f"{NAMESPACE}:dedup:",
        lease=float(os.environ.get("FAULT_LEASE", "2")),
    )
    return Bus(f"{NAMESPACE}-workers", registry=registry, dedup=cache, concurrency=4)


def publish(total: int) -> None:
    """Provision the workers' queue, publish ``total`` jobs, record their ids."""
    bus = make_bus()
    bus.provision()
    for start in range(0, total, 250):
        ids = bus.publish_many([Job(n) for n in range(start, min(start + 250, total))])
        STATE.sadd(f"{NAMESPACE}:sent", *ids)
    bus.stop()


def publish_steadily(total: int) -> None:
    """Publish ``total`` jobs one by one, retrying each until the broker confirms it (faults are expected).

    Counts the publishes that raised in ``<ns>:publish_errors``.
    """
    bus = make_bus()
    bus.provision()
    for n in range(total):
        while True:
            try:
                STATE.sadd(f"{NAMESPACE}:sent", bus.publish(Job(n)))
                break
            except PublishError:
                STATE.incr(f"{NAMESPACE}:publish_errors")
                time.sleep(0.2)
    bus.stop()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="worker %(process)d %(levelname)s %(message)s")
    if len(sys.argv) > 2 and sys.argv[1] == "publish":
        publish(int(sys.argv[2]))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "publish-steadily":
        publish_steadily(int(sys.argv[2]))
        return
    bus = make_bus()
    print("ready", flush=True)
    bus.run()


if __name__ == "__main__":
    main()
