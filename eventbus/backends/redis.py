"""The Redis Streams backend: ``redis://host:6379/0`` (``rediss://`` for TLS).

Each topic is a stream; each queue is a consumer group on the streams of
the topics it subscribes to, plus a stream of its own that carries what is
sent to the queue directly, retries that are due, and messages handed back
by a stopping consumer. A group reads every entry of a topic, so the
consumer acknowledges the manifests its queue did not subscribe to without
handing them to the dispatcher (the subscriptions are kept in Redis, so
every consumer of the queue agrees on them).

Retries wait in a sorted set scored by due time; consumers move due entries
back into the queue's stream with a Lua script. Every settlement that writes
a copy (retry, dead letter, hand-back) stores the copy and acknowledges the
original in one script, so a message is never lost between the two.
Entries left pending by a consumer that died are reclaimed with XAUTOCLAIM
once idle for ``reclaim`` seconds; their delivery count adds to the attempt.
See ``docs/backends/redis.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue as queues
import socket
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import redis
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry

from eventbus import envelope as headers
from eventbus import inspection
from eventbus.backends import redact_url
from eventbus.backends.base import Consumer, DeliveryHandler, replayed
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, EventbusError, PublishError, TopologyConflictError
from eventbus.topology import Topology, dead_letter_name

log = logging.getLogger("eventbus.redis")

#: The stream field that holds the message body; every other field is a header.
BODY = "body"

DEFAULT_PREFIX = "eventbus:"
DEFAULT_MAXLEN = 100_000
DEFAULT_RECLAIM = 60.0
DEFAULT_BLOCK = 1.0
DEFAULT_DELIVERY_LIMIT = 10

# Store a copy of an entry and acknowledge the original, atomically.
# KEYS[1] the source stream, KEYS[2] the target: a stream, or with a delay
# the sorted set of due retries. ARGV[1] group, ARGV[2] entry id, ARGV[3] '1'
# to delete the source entry (a queue's own stream has no other reader),
# ARGV[4] delay in ms ('' = now), ARGV[5..] the fields of the copy.
_SETTLE = """
if ARGV[4] == '' then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
else
  local now = redis.call('TIME')
  local due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[4])
  redis.call('ZADD', KEYS[2], due, cmsgpack.pack({unpack(ARGV, 5)}))
end
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
return acked
"""

# Move due retries into the queue's stream. KEYS[1] the sorted set, KEYS[2]
# the stream; ARGV[1] how many at most. Returns ms until the next one is due, or -1.
_PROMOTE = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, packed in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(cmsgpack.unpack(packed)))
  redis.call('ZREM', KEYS[1], packed)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #head == 0 then return -1 end
return math.max(tonumber(head[2]) - now, 0)
"""

# Trim a topic stream below the oldest entry some group still needs: its
# oldest pending entry, else the one after the last it was given. Nothing a
# group has yet to read or acknowledge is removed. KEYS[1] the stream.
_TRIM = """
local floor_ms, floor_seq
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local pending = redis.call('XPENDING', KEYS[1], info['name'])
  local id, bump = info['last-delivered-id'], 1
  if pending[1] > 0 then id, bump = pending[2], 0 end
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq) + bump
  if floor_ms == nil or ms < floor_ms or (ms == floor_ms and seq < floor_seq) then
    floor_ms, floor_seq = ms, seq
  end
end
if floor_ms == nil then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%.0f-%.0f', floor_ms, floor_seq))
"""

# Remove a stopped consumer from its groups if it holds nothing pending.
# KEYS the streams; ARGV[1] group, ARGV[2] consumer.
_FORGET = """
for _, key in ipairs(KEYS) do
  local pending = redis.pcall('XPENDING', key, ARGV[1], '-', '+', 1, ARGV[2])
  if type(pending) == 'table' and pending.err == nil and #pending == 0 then
    redis.call('XGROUP', 'DELCONSUMER', key, ARGV[1], ARGV[2])
  end
end
return 0
"""

# Move one dead letter back to its queue: delete it from the dead-letter
# stream and add the copy to the queue's stream, or do nothing if it is gone
# (another replay took it). KEYS[1] dead-letter stream, KEYS[2] the queue's
# stream; ARGV[1] the entry id, ARGV[2..] the fields of the copy.
_REPLAY = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
return 1
"""


def connect(url: str) -> redis.Redis[bytes]:
    """A client for ``url`` with timeouts and a short retry, unless the URL's query sets them.

    A down server should fail a call within about a second rather than after
    redis-py's default ten retries: the callers (a consumer loop, the
    dispatcher) have their own way to wait and try again.
    """
    given = {name for name, _ in parse_qsl(urlsplit(url).query)}
    options: dict[str, Any] = {
        "socket_connect_timeout": 5.0,
        "socket_timeout": 15.0,
        "retry": Retry(EqualJitterBackoff(cap=0.5, base=0.05), 3),
    }
    try:
        return redis.Redis.from_url(url, **{k: v for k, v in options.items() if k not in given})
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {redact_url(url)!r}: {exc}") from exc


@attrs.frozen
class Keys:
    """Where things live in Redis; every key starts with ``prefix``."""

    prefix: str = DEFAULT_PREFIX

    def topic(self, topic: str) -> str:
        """The stream of a topic."""
        return f"{self.prefix}topic:{topic}"

    def queue(self, queue: str) -> str:
        """The queue's own stream (sends, due retries, handed-back messages; dead letters for a DLQ)."""
        return f"{self.prefix}queue:{queue}"

    def delayed(self, queue: str) -> str:
        """The sorted set of the queue's retries, scored by due time (ms)."""
        return f"{self.prefix}delayed:{queue}"

    def routes(self, queue: str) -> str:
        """The set of ``"topic manifest"`` pairs the queue subscribes to."""
        return f"{self.prefix}routes:{queue}"


def to_fields(envelope: Envelope) -> dict[str, str | bytes]:
    """The stream fields of ``envelope``: its wire headers plus ``body``."""
    if BODY in envelope.headers:
        raise PublishError(
            f"message {envelope.message_id} has a header named {BODY!r}, which the redis backend uses "
            "for the message body; rename the header"
        )
    fields: dict[str, str | bytes] = dict(envelope.to_wire())
    fields[BODY] = envelope.body
    return fields


def from_fields(fields: Mapping[bytes, bytes], deliveries: int = 1) -> Envelope:
    """Rebuild an envelope from stream fields; each redelivery of the entry adds one to its attempt."""
    body = fields.get(BODY.encode(), b"")
    wire = {key.decode("utf-8", "replace"): value for key, value in fields.items() if key != BODY.encode()}
    envelope = Envelope.from_wire(body, wire)
    if deliveries > 1:
        envelope = attrs.evolve(envelope, attempt=envelope.attempt + deliveries - 1)
    return envelope


class RedisBackend:
    """The :class:`~eventbus.backends.base.Backend` on Redis Streams.

    ``prefix`` starts every key (give each application or test run its own),
    ``maxlen`` caps each topic stream approximately (0: no cap), ``reclaim``
    is how long (seconds) an entry stays pending with a silent consumer
    before another takes it over, ``block`` how long one read waits for new
    entries (it bounds how fast ``stop`` returns and how late a retry may
    be), ``delivery_limit`` how many times one entry may be taken over before
    it is dead-lettered (a message that kills its consumer).
    """

    def __init__(
        self,
        client: redis.Redis[bytes],
        *,
        prefix: str = DEFAULT_PREFIX,
        maxlen: int = DEFAULT_MAXLEN,
        reclaim: float = DEFAULT_RECLAIM,
        block: float = DEFAULT_BLOCK,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        url: str = "",
    ) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.maxlen = maxlen
        self.reclaim = reclaim
        self.block = block
        self.delivery_limit = delivery_limit
        self.url = redact_url(url) if url else repr(client)
        self._settle = client.register_script(_SETTLE)
        self._promote = client.register_script(_PROMOTE)
        self._trim = client.register_script(_TRIM)
        self._forget = client.register_script(_FORGET)
        self._replay = client.register_script(_REPLAY)
        self._lock = threading.Lock()
        self._dead_letters: dict[str, str] = {}
        self._routes: dict[str, set[str]] = {}

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        """``redis://[:password@]host:port/db?prefix=...&maxlen=...&reclaim=...&block=...&delivery_limit=...``.

        Other query options (``socket_timeout``, ``ssl_cert_reqs`` ...) go to redis-py.
        """
        parts = urlsplit(url)
        ours: dict[str, Any] = {}
        rest: list[tuple[str, str]] = []
        readers = {"prefix": str, "maxlen": int, "reclaim": float, "block": float, "delivery_limit": int}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in readers:
                rest.append((name, value))
                continue
            try:
                ours[name] = readers[name](value)
            except ValueError:
                raise ConfigurationError(f"{redact_url(url)!r}: {name}={value!r} is not a number") from None
        for name in ("maxlen", "delivery_limit"):
            if ours.get(name, 0) < 0:
                raise ConfigurationError(f"{redact_url(url)!r}: {name} must be >= 0")
        for name in ("reclaim", "block"):
            if name in ours and ours[name] <= 0:
                raise ConfigurationError(f"{redact_url(url)!r}: {name} must be a positive number of seconds")
        if ours.get("reclaim", DEFAULT_RECLAIM) < 4 * ours.get("block", DEFAULT_BLOCK):
            raise ConfigurationError(
                f"{redact_url(url)!r}: reclaim must be at least 4 times block, so that a live consumer always "
                "refreshes the entries it holds before another one may reclaim them"
            )
        client = connect(urlunsplit(parts._replace(query=urlencode(rest))))
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        if timeout is not None and ours.get("block", DEFAULT_BLOCK) + 1 >= timeout:
            raise ConfigurationError(
                f"{redact_url(url)!r}: block must be shorter than socket_timeout ({timeout}s) by at least a second"
            )
        return cls(client, url=url, **ours)

    # -- provisioning ---------------------------------------------------------

    def provision(self, topology: Topology) -> None:
        """Create each queue's stream and group, its dead-letter stream, and a group per subscription.

        A queue's group on a topic starts at the end of the topic, as a newly
        bound queue would. The subscriptions are added to the queue's routes
        in Redis (a union: every version of a service adds its own).
        """
        pipe = self.redis.pipeline(transaction=False)
        for plan in topology.queues:
            pipe.xgroup_create(self.keys.queue(plan.name), plan.name, id="0", mkstream=True)
            pipe.xgroup_create(self.keys.queue(plan.dead_letter), plan.dead_letter, id="0", mkstream=True)
        for sub in topology.subscriptions:
            pipe.sadd(self.keys.routes(sub.queue), *(f"{sub.topic} {manifest}" for manifest in sub.manifests))
            pipe.xgroup_create(self.keys.topic(sub.topic), sub.queue, id="$", mkstream=True)
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise EventbusError(f"could not provision {topology.service!r} on Redis at {self.url}: {exc}") from exc
        for result in results:
            if isinstance(result, redis.ResponseError) and "BUSYGROUP" not in str(result):
                if "WRONGTYPE" in str(result):
                    raise TopologyConflictError(
                        f"a key of {topology.service!r} under prefix {self.keys.prefix!r} exists in Redis at "
                        f"{self.url} but is not a stream: {result}; delete it or choose another prefix"
                    )
                raise EventbusError(f"could not provision {topology.service!r} on Redis at {self.url}: {result}")
        with self._lock:
            for plan in topology.queues:
                self._dead_letters[plan.name] = plan.dead_letter
            for sub in topology.subscriptions:
                self._routes.setdefault(sub.queue, set()).update(f"{sub.topic} {m}" for m in sub.manifests)

    def dead_letter_queue(self, queue: str) -> str:
        """The dead-letter queue of ``queue``."""
        return self._dead_letters.get(queue) or dead_letter_name(queue)

    def known_routes(self, queue: str) -> set[str]:
        """The ``"topic manifest"`` pairs this process provisioned for ``queue``."""
        with self._lock:
            return set(self._routes.get(queue, ()))

    # -- publishing ----------------------------------------------------------

    def _xadd_topic(self, client: Any, topic: str, envelope: Envelope) -> Any:
        return client.xadd(self.keys.topic(topic), to_fields(envelope), maxlen=self.maxlen or None, approximate=True)

    def publish(self, topic: str, envelope: Envelope) -> None:
        """XADD ``envelope`` to the topic's stream; return once Redis replied with the entry id."""
        try:
            self._xadd_topic(self.redis, topic, envelope)
        except redis.RedisError as exc:
            raise PublishError(
                f"Redis at {self.url} did not store message {envelope.message_id} on topic {topic!r}: {exc}"
            ) from exc

    def publish_many(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        """XADD every message in one pipeline; raise naming those Redis did not store."""
        if not messages:
            return
        pipe = self.redis.pipeline(transaction=False)
        for topic, envelope in messages:
            self._xadd_topic(pipe, topic, envelope)
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            ids = ", ".join(envelope.message_id for _, envelope in messages)
            raise PublishError(f"Redis at {self.url} did not confirm any of messages {ids}: {exc}") from exc
        failed = [
            f"{envelope.message_id} on {topic!r} ({result})"
            for (topic, envelope), result in zip(messages, results, strict=True)
            if isinstance(result, Exception)
        ]
        if failed:
            raise PublishError(
                f"Redis at {self.url} did not store {len(failed)} of {len(messages)} messages: {'; '.join(failed)}"
            )

    def send(self, queue: str, envelope: Envelope) -> None:
        """XADD ``envelope`` to the queue's own stream, which must exist (provisioned)."""
        try:
            entry = self.redis.xadd(self.keys.queue(queue), to_fields(envelope), nomkstream=True)
        except redis.RedisError as exc:
            raise PublishError(
                f"Redis at {self.url} did not store message {envelope.message_id} on queue {queue!r}: {exc}"
            ) from exc
        if entry is None:
            raise PublishError(
                f"no queue named {queue!r} on Redis at {self.url}; provision the service that consumes it"
            )

    # -- consuming ------------------------------------------------------------

    def consume(self, queue: str, handler: DeliveryHandler, *, concurrency: int, prefetch: int) -> Consumer:
        """Start a reader thread and ``concurrency`` handler threads on ``queue``; hold up to ``prefetch`` entries."""
        return RedisConsumer(self, queue, handler, concurrency=concurrency, prefetch=prefetch)

    def dead_letters(self, queue: str, limit: int) -> list[Envelope]:
        """The oldest ``limit`` entries of the queue's dead-letter stream (XRANGE: nothing is removed)."""
        entries = self.redis.xrange(self.keys.queue(self.dead_letter_queue(queue)), count=limit)
        return [from_fields(fields) for _, fields in entries]

    def replay_dead_letters(
        self, queue: str, *, limit: int | None = None, message_ids: Collection[str] | None = None
    ) -> list[str]:
        """Move dead letters back to the queue's own stream, oldest first; return their message ids.

        Each one moves in a script (delete from the dead-letter stream, add to
        the queue's stream), so it is neither lost nor replayed twice.
        """
        source = self.keys.queue(self.dead_letter_queue(queue))
        target = self.keys.queue(queue)
        wanted = None if message_ids is None else set(message_ids)
        moved: list[str] = []
        start = "-"
        while limit is None or len(moved) < limit:
            entries = self.redis.xrange(source, min=start, count=100)
            if not entries:
                break
            for entry_id, fields in entries:
                start = f"({_text(entry_id)}"
                envelope = from_fields(fields)
                if wanted is not None and envelope.message_id not in wanted:
                    continue
                args: list[Any] = [entry_id]
                for key, value in to_fields(replayed(envelope)).items():
                    args += [key, value]
                if self._replay(keys=[source, target], args=args):
                    moved.append(envelope.message_id)
                if limit is not None and len(moved) >= limit:
                    break
        return moved

    def purge_dead_letters(self, queue: str) -> int:
        """Empty the queue's dead-letter stream (XTRIM MAXLEN 0: its group stays); return how many went."""
        return int(self.redis.xtrim(self.keys.queue(self.dead_letter_queue(queue)), maxlen=0, approximate=False))

    def inspect(self, topology: Topology) -> inspection.TopologyReport:
        """Compare ``topology`` with the streams, groups and routes in Redis; change nothing.

        Topic streams come into being with the first publish, so a topic is
        only checked for being a stream if its key exists. A queue and its
        dead-letter queue are streams with a group of their name; a
        subscription is the queue's group on the topic's stream plus its
        routes (``"topic manifest"`` in the queue's routes set). Routes to
        topics outside the plan are reported as extra subscriptions.
        """
        queue_names = [name for plan in topology.queues for name in (plan.name, plan.dead_letter)]
        routes: dict[str, dict[str, set[str]]] = {}
        pipe = self.redis.pipeline(transaction=False)
        for plan in topology.queues:
            pipe.smembers(self.keys.routes(plan.name))
        for plan, members in zip(topology.queues, pipe.execute(), strict=True):
            for member in members:
                topic, _, manifest = _text(member).partition(" ")
                routes.setdefault(plan.name, {}).setdefault(topic, set()).add(manifest)
        subscribed = {(sub.topic, sub.queue) for sub in topology.subscriptions}
        for queue, by_topic in routes.items():
            subscribed.update((topic, queue) for topic in by_topic)
        streams = sorted(
            {self.keys.queue(name) for name in queue_names}
            | {self.keys.topic(topic) for topic, _ in subscribed}
            | {self.keys.topic(topic) for topic in topology.topics}
        )
        groups = self._groups(streams)

        found: inspection.Resources = {}
        problems: list[inspection.Difference] = []
        for topic in topology.topics:
            kind = groups.get(self.keys.topic(topic))
            found[(inspection.TOPIC, topic)] = {}
            if isinstance(kind, str):
                problems.append(inspection.Difference(inspection.TOPIC, topic, f"key is a {kind}, not a stream"))
        for plan in topology.queues:
            for kind, name in ((inspection.QUEUE, plan.name), (inspection.DEAD_LETTER_QUEUE, plan.dead_letter)):
                present = groups.get(self.keys.queue(name))
                if present is None:
                    continue
                found[(kind, name)] = {}
                if isinstance(present, str):
                    problems.append(inspection.Difference(kind, name, f"key is a {present}, not a stream"))
                elif name not in present:
                    problems.append(inspection.Difference(kind, name, f"its stream has no consumer group {name!r}"))
        planned = {(sub.topic, sub.queue) for sub in topology.subscriptions}
        for topic, queue in sorted(subscribed):
            grouped = groups.get(self.keys.topic(topic))
            manifests = tuple(sorted(routes.get(queue, {}).get(topic, ())))
            # A planned subscription is there when the queue's group is on the topic's stream;
            # routes to a topic outside the plan are extra, group or not.
            if (isinstance(grouped, set) and queue in grouped) or (topic, queue) not in planned:
                found[(inspection.SUBSCRIPTION, inspection.subscription_name(topic, queue))] = {"manifests": manifests}
        return inspection.compare(topology, found, problems)

    def _groups(self, streams: Sequence[str]) -> dict[str, set[str] | str]:
        """For each existing key: the names of its consumer groups, or its type when it is not a stream."""
        pipe = self.redis.pipeline(transaction=False)
        for key in streams:
            pipe.type(key)
        types = dict(zip(streams, (_text(t) for t in pipe.execute()), strict=True))
        existing = [key for key, kind in types.items() if kind == "stream"]
        pipe = self.redis.pipeline(transaction=False)
        for key in existing:
            pipe.xinfo_groups(key)
        result: dict[str, set[str] | str] = {key: kind for key, kind in types.items() if kind not in ("stream", "none")}
        for key, infos in zip(existing, pipe.execute(), strict=True):
            result[key] = {_text(info["name"]) for info in infos}
        return result

    def close(self) -> None:
        """Close the connections; they reopen on next use."""
        self.redis.connection_pool.disconnect()

    def __repr__(self) -> str:
        return f"<RedisBackend {self.url} prefix={self.keys.prefix!r}>"


class RedisDelivery:
    """One stream entry taken by a consumer, waiting to be settled."""

    __slots__ = ("_consumer", "_fields", "entry_id", "envelope", "settled", "stream")

    def __init__(
        self, consumer: RedisConsumer, stream: str, entry_id: str, fields: Mapping[bytes, bytes], deliveries: int
    ) -> None:
        self._consumer = consumer
        self._fields = fields
        self.stream = stream
        self.entry_id = entry_id
        self.envelope = from_fields(fields, deliveries)
        self.settled = False

    @property
    def queue(self) -> str:
        """The queue it was read for."""
        return self._consumer.queue

    def _settling(self) -> None:
        if self.settled:
            raise RuntimeError(f"message {self.envelope.message_id} was already settled")

    def ack(self) -> None:
        """XACK the entry (and delete it from the queue's own stream)."""
        self._settling()
        self._consumer.ack(self)
        self.settled = True

    def retry(self, envelope: Envelope, delay: float) -> None:
        """Store ``envelope`` as a retry due in ``delay`` seconds, and XACK the entry, in one script."""
        self._settling()
        self._consumer.move(self, to_fields(envelope), delay=delay)
        self.settled = True

    def dead_letter(self, envelope: Envelope) -> None:
        """XADD ``envelope`` to the dead-letter stream and XACK the entry, in one script."""
        self._settling()
        self._consumer.move(self, to_fields(envelope), dead=True)
        self.settled = True

    def release(self) -> None:
        """Hand the entry back untouched: a copy at the end of the queue's stream."""
        self._settling()
        self._consumer.move(self, self._fields)
        self.settled = True


class RedisConsumer:
    """Consumes one queue: a reader thread feeding handler threads.

    The reader moves due retries, reads with XREADGROUP (blocking), drops
    foreign manifests, and now and then keeps the entries it holds from
    looking idle, reclaims idle entries of dead consumers, and trims topic
    streams. It holds at most ``prefetch`` entries (waiting and running).
    """

    def __init__(
        self, backend: RedisBackend, queue: str, handler: DeliveryHandler, *, concurrency: int, prefetch: int
    ) -> None:
        self.queue = queue
        self.name = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self._backend = backend
        self._redis = backend.redis
        self._keys = backend.keys
        self._handler = handler
        self._capacity = max(prefetch, concurrency, 1)
        self._own = self._keys.queue(queue)
        # stream key -> manifests taken from it (None: everything, the queue's own stream)
        self._streams: dict[str, frozenset[str] | None] = {self._own: None}
        self._ready = False
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._held: dict[tuple[str, str], float] = {}  # (stream, entry id) -> when we last touched it
        self._waiting: queues.SimpleQueue[RedisDelivery | None] = queues.SimpleQueue()
        self._next_chores = 0.0
        self._reader = threading.Thread(target=self._read, name=f"eventbus-{queue}-reader", daemon=True)
        self._workers = [
            threading.Thread(target=self._work, name=f"eventbus-{queue}-{i}", daemon=True) for i in range(concurrency)
        ]
        for thread in [self._reader, *self._workers]:
            thread.start()

    # -- reading --------------------------------------------------------------

    def _read(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._step()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    failures += 1
                    log.error("Redis refused a command while consuming %s: %s", self.queue, exc)
                    self._stopping.wait(min(2.0**failures, 30.0))
                    continue
                log.warning(
                    "consumer group %s is missing in Redis (restarted without data?); recreating it", self.queue
                )
                self._ready = False
            except redis.RedisError as exc:
                failures += 1
                delay = min(0.25 * 2.0**failures, 30.0)
                log.warning(
                    "lost Redis at %s while consuming %s (%s); retrying in %.1fs",
                    self._backend.url,
                    self.queue,
                    exc,
                    delay,
                )
                self._stopping.wait(delay)
            except Exception:
                failures += 1
                log.exception("unexpected error while consuming %s; retrying", self.queue)
                self._stopping.wait(min(2.0**failures, 30.0))
            else:
                if failures:
                    log.info("consuming %s from Redis at %s again", self.queue, self._backend.url)
                failures = 0

    def _step(self) -> None:
        if not self._ready:
            self._setup()
        if time.monotonic() >= self._next_chores:
            self._chores()
            self._next_chores = time.monotonic() + min(self._backend.reclaim / 4, 15.0)
        due_in = int(self._backend._promote(keys=[self._keys.delayed(self.queue), self._own], args=[100]))
        free = self._free(self._backend.block)
        if not free:
            return
        wait = self._backend.block * 1000
        if due_in >= 0:
            wait = min(wait, due_in)
        reply = self._redis.xreadgroup(
            self.queue, self.name, dict.fromkeys(self._streams, ">"), count=free, block=max(int(wait), 1)
        )
        self._take(_entries(reply))

    def _setup(self) -> None:
        """Ensure the groups exist (a Redis restarted without data has none) and learn the routes."""
        known = self._backend.known_routes(self.queue)
        pipe = self._redis.pipeline(transaction=False)
        if known:
            pipe.sadd(self._keys.routes(self.queue), *known)
        pipe.smembers(self._keys.routes(self.queue))
        routes = pipe.execute()[-1]
        self._learn({r.decode() for r in routes} | known)
        pipe = self._redis.pipeline(transaction=False)
        for stream, manifests in self._streams.items():
            pipe.xgroup_create(stream, self.queue, id="0" if manifests is None else "$", mkstream=True)
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result
        self._ready = True

    def _learn(self, routes: Iterable[str]) -> None:
        by_topic: dict[str, set[str]] = {}
        for route in routes:
            topic, _, manifest = route.partition(" ")
            by_topic.setdefault(self._keys.topic(topic), set()).add(manifest)
        streams: dict[str, frozenset[str] | None] = {self._own: None}
        streams.update((stream, frozenset(manifests)) for stream, manifests in sorted(by_topic.items()))
        self._streams = streams

    def _free(self, timeout: float) -> int:
        with self._changed:
            self._changed.wait_for(lambda: len(self._held) < self._capacity or self._stopping.is_set(), timeout)
            return 0 if self._stopping.is_set() else max(self._capacity - len(self._held), 0)

    def _take(
        self, entries: list[tuple[str, str, dict[bytes, bytes] | None]], counts: Mapping[str, int] | None = None
    ) -> None:
        counts = counts or {}
        foreign: dict[str, list[str]] = {}
        for stream, entry_id, fields in entries:
            manifests = self._streams.get(stream)
            if fields is None or (manifests is not None and _manifest(fields) not in manifests):
                foreign.setdefault(stream, []).append(entry_id)
                continue
            delivery = RedisDelivery(self, stream, entry_id, fields, counts.get(entry_id, 1))
            with self._changed:
                self._held[(stream, entry_id)] = time.monotonic()
            if self._stopping.is_set():
                self._hand_back(delivery)
            elif counts.get(entry_id, 1) > self._backend.delivery_limit > 0:
                self._give_up(delivery, counts[entry_id])
            else:
                self._waiting.put(delivery)
        if foreign:
            pipe = self._redis.pipeline(transaction=False)
            for stream, ids in foreign.items():
                pipe.xack(stream, self.queue, *ids)
            pipe.execute()

    # -- chores -----------------------------------------------------------------

    def _chores(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.smembers(self._keys.routes(self.queue))
        self._learn({r.decode() for r in pipe.execute()[0]} | self._backend.known_routes(self.queue))
        self._touch()
        self._reclaim()
        for stream, manifests in self._streams.items():
            if manifests is not None:
                self._backend._trim(keys=[stream])

    def _touch(self) -> None:
        """Reset the idle time of entries we have held for a while, so that nobody reclaims them."""
        reclaim_ms = int(self._backend.reclaim * 1000)
        cutoff = time.monotonic() - self._backend.reclaim / 4
        with self._changed:
            stale = [key for key, touched in self._held.items() if touched < cutoff]
        if not stale:
            return
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id in stale:
            by_stream.setdefault(stream, []).append(entry_id)
        pipe = self._redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xclaim(stream, self.queue, self.name, reclaim_ms // 4, ids, justid=True)
        now = time.monotonic()
        for stream, claimed in zip(by_stream, pipe.execute(), strict=True):
            with self._changed:
                for entry_id in claimed:
                    key = (stream, _text(entry_id))
                    if key in self._held:
                        self._held[key] = now

    def _reclaim(self) -> None:
        """Take over entries another consumer left pending for longer than ``reclaim``."""
        for stream in list(self._streams):
            free = self._free(0)
            if not free:
                return
            reply = self._redis.xautoclaim(
                stream, self.queue, self.name, int(self._backend.reclaim * 1000), "0-0", count=free
            )
            claimed = [(stream, _text(entry_id), fields) for entry_id, fields in reply[1]]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                log.error(
                    "%d pending entries of %s were trimmed before %s acknowledged them (maxlen too small?): %s",
                    len(deleted),
                    stream,
                    self.queue,
                    ", ".join(_text(d) for d in deleted[:10]),
                )
            if not claimed:
                continue
            ids = [entry_id for _, entry_id, _ in claimed]
            with self._changed:
                span = len(ids) + len(self._held)  # entries we already hold may sit between the claimed ones
            pending = self._redis.xpending_range(stream, self.queue, ids[0], ids[-1], span, self.name)
            counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
            log.warning(
                "reclaimed %d entries of %s for %s left pending for over %gs (a consumer died or stalled)",
                len(claimed),
                stream,
                self.queue,
                self._backend.reclaim,
            )
            self._take(claimed, counts)

    # -- handling -------------------------------------------------------------

    def _work(self) -> None:
        while True:
            delivery = self._waiting.get()
            if delivery is None:
                return
            try:
                self._handler(delivery)
            except Exception:
                log.exception("could not settle message %s from %s", delivery.envelope.message_id, self.queue)
            if not delivery.settled:
                log.warning(
                    "message %s stays pending on %s; it is redelivered after %gs",
                    delivery.envelope.message_id,
                    self.queue,
                    self._backend.reclaim,
                )
            self._forget(delivery)

    def _forget(self, delivery: RedisDelivery) -> None:
        with self._changed:
            self._held.pop((delivery.stream, delivery.entry_id), None)
            self._changed.notify_all()

    def ack(self, delivery: RedisDelivery) -> None:
        """XACK ``delivery`` (and XDEL it from the queue's own stream), in one round trip."""
        if delivery.stream == self._own:
            pipe = self._redis.pipeline(transaction=True)
            pipe.xack(delivery.stream, self.queue, delivery.entry_id)
            pipe.xdel(delivery.stream, delivery.entry_id)
            pipe.execute()
        else:
            self._redis.xack(delivery.stream, self.queue, delivery.entry_id)  # type: ignore[no-untyped-call]

    def move(
        self, delivery: RedisDelivery, fields: Mapping[Any, str | bytes], *, delay: float = 0.0, dead: bool = False
    ) -> None:
        """Store ``fields`` (dead letter, retry or hand-back) and XACK ``delivery``, atomically."""
        if dead:
            target = self._keys.queue(self._backend.dead_letter_queue(self.queue))
        elif delay > 0:
            target = self._keys.delayed(self.queue)
        else:
            target = self._own
        args: list[Any] = [self.queue, delivery.entry_id, int(delivery.stream == self._own)]
        args.append(str(max(int(delay * 1000), 1)) if delay > 0 and not dead else "")
        for key, value in fields.items():
            args += [key, value]
        self._backend._settle(keys=[delivery.stream, target], args=args)

    def _hand_back(self, delivery: RedisDelivery) -> None:
        try:
            delivery.release()
        except redis.RedisError as exc:
            log.warning(
                "could not hand message %s back to %s (%s); it is redelivered after %gs",
                delivery.envelope.message_id,
                self.queue,
                exc,
                self._backend.reclaim,
            )
        self._forget(delivery)

    def _give_up(self, delivery: RedisDelivery, deliveries: int) -> None:
        envelope = delivery.envelope
        log.error(
            "dead-lettering message %s from %s: taken over %d times without being settled",
            envelope.message_id,
            self.queue,
            deliveries,
        )
        extra = dict(envelope.headers)
        extra[headers.ERROR_REASON] = "delivery-limit"
        extra[headers.ERROR_MESSAGE] = (
            f"delivered {deliveries} times without being settled (delivery_limit={self._backend.delivery_limit}); "
            "its consumers may have crashed while handling it"
        )
        extra[headers.ERROR_ATTEMPT] = str(envelope.attempt)
        extra[headers.ERROR_QUEUE] = self.queue
        extra[headers.DEAD_LETTERED_AT] = repr(time.time())
        try:
            delivery.dead_letter(attrs.evolve(envelope, headers=extra))
        finally:
            self._forget(delivery)

    # -- stopping ---------------------------------------------------------------

    def stop(self, timeout: float) -> None:
        """Stop reading, hand back what no handler started, let running handlers finish (up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        self._reader.join(max(deadline - time.monotonic(), 0.0))
        while True:
            try:
                delivery = self._waiting.get_nowait()
            except queues.Empty:
                break
            if delivery is not None:
                self._hand_back(delivery)
        for _ in self._workers:
            self._waiting.put(None)
        for thread in self._workers:
            thread.join(max(deadline - time.monotonic(), 0.0))
        alive = sum(thread.is_alive() for thread in [self._reader, *self._workers])
        if alive:
            log.warning("%d thread(s) consuming %s still running after %.1fs", alive, self.queue, timeout)
            return
        with contextlib.suppress(redis.RedisError):  # tidiness only: else the name stays listed in the group
            self._backend._forget(keys=list(self._streams), args=[self.queue, self.name])


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _manifest(fields: Mapping[bytes, bytes]) -> str:
    return fields.get(headers.MANIFEST.encode(), b"").decode("utf-8", "replace")


def _entries(reply: Any) -> list[tuple[str, str, dict[bytes, bytes] | None]]:
    """Flatten an XREADGROUP reply (RESP2 list or RESP3 map) to ``(stream, entry id, fields)``."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    return [(_text(stream), _text(entry_id), fields) for stream, entries in pairs for entry_id, fields in entries]
