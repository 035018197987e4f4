"""The SNS/SQS backend: the bus on SNS topics and SQS queues, through boto3."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import boto3
import boto3.session
from botocore.config import Config

from eventbus import envelope as h
from eventbus import inspection
from eventbus.backends import redact_url
from eventbus.backends.base import Consumer, DeliveryHandler
from eventbus.backends.sqs import dead_letters, diff, wire
from eventbus.backends.sqs.consumer import AWS_ERRORS, BATCH, SqsConsumer
from eventbus.backends.sqs.provision import Names, Provisioned, Provisioner, Reader
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, EventbusError, PublishError
from eventbus.specs import is_fifo
from eventbus.topology import Topology, dead_letter_name

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sns.type_defs import (
        BatchResultErrorEntryTypeDef,
        PublishBatchRequestEntryTypeDef,
        PublishInputTypeDef,
    )
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import ChangeMessageVisibilityBatchRequestEntryTypeDef, SendMessageRequestTypeDef

_PREFIX = re.compile(r"^[A-Za-z0-9_-]*$")
_INT_OPTIONS = {"max_receives": (1, 1000), "wait": (0, 20), "visibility": (1, 43200)}
_TEXT_OPTIONS = ("region", "endpoint", "profile", "prefix")


@attrs.frozen
class FailedEntry:
    """A message of a batch that the broker did not accept, and why."""

    topic: str
    envelope: Envelope
    reason: str

    def __str__(self) -> str:
        return f"{self.envelope.manifest} {self.envelope.message_id} on {self.topic}: {self.reason}"


class BatchPublishError(PublishError):
    """Some messages of ``publish_many`` were not accepted; ``failed`` lists them, the others were published."""

    def __init__(self, failed: Sequence[FailedEntry], total: int) -> None:
        self.failed = tuple(failed)
        shown = "; ".join(str(entry) for entry in self.failed[:5])
        more = f"; and {len(self.failed) - 5} more" if len(self.failed) > 5 else ""
        super().__init__(
            f"{len(self.failed)} of {total} messages were not published ({shown}{more}); "
            "the others were accepted. Publish the failed ones again (see .failed)"
        )


class SqsBackend:
    """SNS topics and SQS queues, on AWS or on any SNS/SQS-compatible server.

    ``region``, ``endpoint`` (a local server's URL; AWS when None),
    ``profile`` and ``session`` choose where and as whom; credentials come
    from boto3's usual chain unless ``session`` carries them. ``prefix`` is
    put before every topic and queue name, so that environments can share
    an account. ``max_receives`` is the redrive policy's receive count
    before SQS itself moves a message to the dead-letter queue: keep it
    above every handler's ``retries + 1``. ``wait`` is the long-polling time
    and ``visibility`` the visibility timeout, both in seconds.

    The URL form is ``sqs://?region=...&endpoint=...&prefix=...``; see
    ``docs/backends/sqs.md``.
    """

    def __init__(
        self,
        *,
        region: str | None = None,
        endpoint: str | None = None,
        profile: str | None = None,
        prefix: str = "",
        max_receives: int = 10,
        wait: int = 20,
        visibility: int = 30,
        session: boto3.session.Session | None = None,
    ) -> None:
        if not _PREFIX.match(prefix):
            raise ConfigurationError(f"prefix={prefix!r} may only contain letters, digits, '-' and '_'")
        for name, value in (("max_receives", max_receives), ("wait", wait), ("visibility", visibility)):
            low, high = _INT_OPTIONS[name]
            if not low <= value <= high:
                raise ConfigurationError(f"{name}={value} must be between {low} and {high}")
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigurationError(f"endpoint={endpoint!r} must be an http:// or https:// URL")
        self._session = session or boto3.session.Session(profile_name=profile, region_name=region)
        self.region = region or self._session.region_name
        if not self.region:
            raise ConfigurationError(
                "no AWS region for the sqs:// backend: add region=... to the URL or set AWS_REGION"
            )
        self.endpoint = endpoint
        self.names = Names(prefix)
        self.max_receives = max_receives
        self.wait = wait
        self.visibility = visibility
        self._lock = threading.Lock()
        self._sns: SNSClient | None = None
        self._sqs: SQSClient | None = None
        self._topic_arns: dict[str, str] = {}
        self._queue_urls: dict[str, str] = {}
        self._consumers: list[SqsConsumer] = []

    @classmethod
    def from_url(cls, url: str) -> SqsBackend:
        """``sqs://[KEY:SECRET@]?region=...&endpoint=...&prefix=...&max_receives=...&wait=...&visibility=...``.

        A key and secret in the URL are meant for local servers; on AWS let
        boto3 find credentials (environment, profile, instance role).
        """
        parts = urlsplit(url)
        if parts.hostname or parts.port or parts.path not in ("", "/"):
            raise ConfigurationError(
                f"{redact_url(url)!r}: an sqs:// URL has no host or path; give the server as endpoint=..., "
                "e.g. sqs://?region=us-east-1&endpoint=http://127.0.0.1:4566"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        known = {*_TEXT_OPTIONS, *_INT_OPTIONS}
        unknown = sorted(set(query) - known)
        if unknown:
            raise ConfigurationError(
                f"{redact_url(url)!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        options: dict[str, Any] = {}
        for name, values in query.items():
            if len(values) > 1:
                raise ConfigurationError(f"{redact_url(url)!r}: option {name} is given {len(values)} times")
            if name in _INT_OPTIONS:
                try:
                    options[name] = int(values[0])
                except ValueError:
                    raise ConfigurationError(
                        f"{redact_url(url)!r}: {name}={values[0]!r} must be a whole number"
                    ) from None
            else:
                options[name] = values[0]
        session = None
        if parts.username or parts.password:
            session = boto3.session.Session(
                aws_access_key_id=unquote(parts.username or ""),
                aws_secret_access_key=unquote(parts.password or ""),
                region_name=options.get("region"),
            )
        return cls(session=session, **options)

    # -- clients --------------------------------------------------------------

    @property
    def sns(self) -> SNSClient:
        """The SNS client (created on first use)."""
        with self._lock:
            if self._sns is None:
                self._sns = self._session.client(
                    "sns", region_name=self.region, endpoint_url=self.endpoint, config=self._config()
                )
            return self._sns

    @property
    def sqs(self) -> SQSClient:
        """The SQS client (created on first use)."""
        with self._lock:
            if self._sqs is None:
                self._sqs = self._session.client(
                    "sqs", region_name=self.region, endpoint_url=self.endpoint, config=self._config()
                )
            return self._sqs

    def _config(self) -> Config:
        # Consumers' worker threads share the client: keep a connection each.
        return Config(
            max_pool_connections=50,
            retries={"mode": "standard"},
            read_timeout=self.wait + 30,
        )

    # -- topology -------------------------------------------------------------

    def apply(self, topology: Topology) -> Provisioned:
        """Provision ``topology`` and return what was created, changed or left alone."""
        provisioner = Provisioner(
            self.sns, self.sqs, self.names, max_receives=self.max_receives, visibility=self.visibility
        )
        try:
            done = provisioner.apply(topology)
        except AWS_ERRORS as exc:
            raise EventbusError(
                f"could not provision service {topology.service!r} on SNS/SQS ({self._where()}): {exc}"
            ) from exc
        with self._lock:
            self._topic_arns.update(done.topic_arns)
            self._queue_urls.update(done.queue_urls)
        return done

    def provision(self, topology: Topology) -> None:
        """Create what ``topology`` needs and reconcile what exists (see :meth:`apply`)."""
        self.apply(topology)

    def topic_arn(self, topic: str) -> str:
        """The ARN of topic ``topic`` (CreateTopic is idempotent: it finds or creates it)."""
        with self._lock:
            arn = self._topic_arns.get(topic)
        if arn is not None:
            return arn
        name = self.names.topic(topic)
        try:
            arn = self.sns.create_topic(Name=name, Attributes={"FifoTopic": "true"} if is_fifo(name) else {})[
                "TopicArn"
            ]
        except AWS_ERRORS as exc:
            raise PublishError(f"cannot find or create SNS topic {name} ({self._where()}): {exc}") from exc
        with self._lock:
            self._topic_arns[topic] = arn
        return arn

    def queue_url(self, queue: str) -> str | None:
        """The URL of queue ``queue``, or None if it does not exist."""
        with self._lock:
            url = self._queue_urls.get(queue)
        if url is not None:
            return url
        try:
            url = self.sqs.get_queue_url(QueueName=self.names.queue(queue))["QueueUrl"]
        except self.sqs.exceptions.QueueDoesNotExist:
            return None
        with self._lock:
            self._queue_urls[queue] = url
        return url

    def _existing_queue(self, queue: str) -> str:
        try:
            url = self.queue_url(queue)
        except AWS_ERRORS as exc:
            raise PublishError(f"cannot look up SQS queue {self.names.queue(queue)} ({self._where()}): {exc}") from exc
        if url is None:
            raise PublishError(
                f"SQS queue {self.names.queue(queue)} does not exist ({self._where()}); "
                "provision the service that consumes it first"
            )
        return url

    def _where(self) -> str:
        return self.endpoint or f"AWS {self.region}"

    # -- publishing -----------------------------------------------------------

    def publish(self, topic: str, envelope: Envelope) -> None:
        """SNS Publish; returns once SNS accepted the message, else raises ``PublishError``."""
        outgoing = wire.encode(envelope, fifo=is_fifo(topic))
        outgoing.check_size(f"SNS topic {self.names.topic(topic)}")
        request: PublishInputTypeDef = {
            "TopicArn": self.topic_arn(topic),
            "Message": outgoing.body,
            "MessageAttributes": outgoing.attributes,
        }
        if outgoing.group_id is not None and outgoing.dedup_id is not None:
            request["MessageGroupId"] = outgoing.group_id
            request["MessageDeduplicationId"] = outgoing.dedup_id
        try:
            self.sns.publish(**request)
        except AWS_ERRORS as exc:
            raise PublishError(
                f"SNS topic {self.names.topic(topic)} did not accept {envelope.manifest} {envelope.message_id}: {exc}"
            ) from exc

    def publish_many(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        """PublishBatch, 10 messages (and at most 256 KiB) per call.

        Raises :class:`BatchPublishError` listing the messages that were not
        accepted; the others are published. On a FIFO topic the messages
        after a failed one are not sent (they would overtake it).
        """
        prepared: dict[str, list[wire.Outgoing]] = {}
        for topic, envelope in messages:
            prepared.setdefault(topic, []).append(wire.encode(envelope, fifo=is_fifo(topic)))
        for topic, batch in prepared.items():
            for outgoing in batch:
                outgoing.check_size(f"SNS topic {self.names.topic(topic)}")  # before anything is sent
        failed: list[FailedEntry] = []
        for topic, batch in prepared.items():
            try:
                arn = self.topic_arn(topic)
            except PublishError as exc:
                failed += [FailedEntry(topic, o.envelope, str(exc)) for o in batch]
                continue
            blocked = ""
            for chunk in _chunks(batch):
                if blocked:
                    failed += [FailedEntry(topic, o.envelope, blocked) for o in chunk]
                    continue
                chunk_failed = self._publish_batch(topic, arn, chunk)
                failed += chunk_failed
                if chunk_failed and is_fifo(topic):
                    blocked = "not sent: an earlier message on this FIFO topic failed and order must hold"
        if failed:
            raise BatchPublishError(failed, len(messages))

    def _publish_batch(self, topic: str, arn: str, chunk: list[wire.Outgoing]) -> list[FailedEntry]:
        entries: list[PublishBatchRequestEntryTypeDef] = []
        for i, outgoing in enumerate(chunk):
            entry: PublishBatchRequestEntryTypeDef = {
                "Id": str(i),
                "Message": outgoing.body,
                "MessageAttributes": outgoing.attributes,
            }
            if outgoing.group_id is not None and outgoing.dedup_id is not None:
                entry["MessageGroupId"] = outgoing.group_id
                entry["MessageDeduplicationId"] = outgoing.dedup_id
            entries.append(entry)
        try:
            response = self.sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=entries)
        except AWS_ERRORS as exc:
            return [FailedEntry(topic, o.envelope, str(exc)) for o in chunk]
        accepted = {entry.get("Id") for entry in response.get("Successful", [])}
        return batch_failures(topic, chunk, accepted, response.get("Failed", []))

    def send(self, queue: str, envelope: Envelope) -> None:
        """SQS SendMessage straight to ``queue``; returns once SQS accepted it."""
        self._send(queue, envelope, wire.encode(envelope, fifo=is_fifo(queue)))

    def send_dead_letter(self, queue: str, envelope: Envelope) -> None:
        """Store ``envelope`` (with its ``error-*`` headers) on the dead-letter queue of ``queue``."""
        dead_letter = dead_letter_name(queue)
        # Unique per dead-lettering, stable across botocore's own retries of this send.
        key = f"{envelope.message_id}|{envelope.headers.get(h.DEAD_LETTERED_AT, '')}"
        dedup_id = hashlib.sha256(key.encode()).hexdigest()
        outgoing = wire.encode(envelope, fifo=is_fifo(dead_letter), dedup_id=dedup_id)
        if outgoing.size > wire.MAX_MESSAGE_SIZE and h.ERROR_TRACEBACK in envelope.headers:
            headers = {k: v for k, v in envelope.headers.items() if k != h.ERROR_TRACEBACK}
            envelope = attrs.evolve(envelope, headers=headers)
            outgoing = wire.encode(envelope, fifo=is_fifo(dead_letter), dedup_id=dedup_id)
        self._send(dead_letter, envelope, outgoing)

    def _send(self, queue: str, envelope: Envelope, outgoing: wire.Outgoing) -> None:
        name = self.names.queue(queue)
        outgoing.check_size(f"SQS queue {name}")
        request: SendMessageRequestTypeDef = {
            "QueueUrl": self._existing_queue(queue),
            "MessageBody": outgoing.body,
            "MessageAttributes": outgoing.attributes,
        }
        if outgoing.group_id is not None and outgoing.dedup_id is not None:
            request["MessageGroupId"] = outgoing.group_id
            request["MessageDeduplicationId"] = outgoing.dedup_id
        try:
            self.sqs.send_message(**request)
        except AWS_ERRORS as exc:
            raise PublishError(
                f"SQS queue {name} did not accept {envelope.manifest} {envelope.message_id}: {exc}"
            ) from exc

    # -- consuming ------------------------------------------------------------

    def consume(self, queue: str, handler: DeliveryHandler, *, concurrency: int, prefetch: int) -> Consumer:
        """Long-poll ``queue`` and run ``handler`` on ``concurrency`` threads, holding up to ``prefetch`` messages."""
        url = self.queue_url(queue)
        if url is None:
            raise ConfigurationError(
                f"SQS queue {self.names.queue(queue)} does not exist ({self._where()}); "
                "provision it first (bus.start() does)"
            )
        consumer = SqsConsumer(
            self.sqs,
            queue=queue,
            url=url,
            handler=handler,
            dead_letters=self,
            concurrency=concurrency,
            prefetch=prefetch,
            wait=self.wait,
            visibility=self.visibility,
        )
        with self._lock:
            self._consumers.append(consumer)
        return consumer

    def dead_letters(self, queue: str, limit: int) -> list[Envelope]:
        """Up to ``limit`` messages of the dead-letter queue of ``queue``, left in place.

        They are received (briefly hidden), then made visible again. On a
        FIFO dead-letter queue at most 10 per message group show up.
        """
        url = self.queue_url(dead_letter_name(queue))
        if url is None or limit <= 0:
            return []
        found: dict[str, Envelope] = {}
        receipts: list[str] = []
        try:
            wait = min(self.wait, 1)
            while len(found) < limit:
                response = self.sqs.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=min(BATCH, limit - len(found)),
                    WaitTimeSeconds=wait,
                    VisibilityTimeout=30,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["MessageGroupId"],
                )
                received = response.get("Messages", [])
                if not received:
                    break
                wait = 0
                for message in received:
                    receipts.append(message.get("ReceiptHandle", ""))
                    found.setdefault(message.get("MessageId", ""), wire.decode(message, count_attempts=False))
        finally:
            self._show_again(url, receipts)
        return list(found.values())[:limit]

    def replay_dead_letters(
        self, queue: str, *, limit: int | None = None, message_ids: Collection[str] | None = None
    ) -> list[str]:
        """Move dead letters of ``queue`` back onto it; return their message ids (see :mod:`.dead_letters`).

        Each copy is accepted by SQS before its dead letter is deleted; the
        dead letters not selected are made visible again, untouched.
        """
        target = self._existing_queue(queue)
        try:
            source = self.queue_url(dead_letter_name(queue))
            if source is None:
                return []
            return dead_letters.replay(
                self.sqs,
                queue=self.names.queue(queue),
                queue_url=target,
                dead_letter_url=source,
                wait=self.wait,
                limit=limit,
                message_ids=message_ids,
            )
        except AWS_ERRORS as exc:
            raise EventbusError(
                f"replaying the dead letters of {self.names.queue(queue)} failed ({self._where()}): {exc}"
            ) from exc

    def purge_dead_letters(self, queue: str) -> int:
        """Delete the dead letters of ``queue`` (those hidden by a peek at that moment stay); return how many."""
        try:
            source = self.queue_url(dead_letter_name(queue))
            return 0 if source is None else dead_letters.purge(self.sqs, source, self.wait)
        except AWS_ERRORS as exc:
            raise EventbusError(
                f"purging the dead letters of {self.names.queue(queue)} failed ({self._where()}): {exc}"
            ) from exc

    def inspect(self, topology: Topology) -> inspection.TopologyReport:
        """Compare ``topology`` with the topics, queues and subscriptions on SNS/SQS; change nothing."""
        try:
            return diff.inspect(
                Reader(self.sns, self.sqs),
                self.names,
                topology,
                max_receives=self.max_receives,
                visibility=self.visibility,
            )
        except AWS_ERRORS as exc:
            raise EventbusError(f"could not read the topology on SNS/SQS ({self._where()}): {exc}") from exc

    def _show_again(self, url: str, receipts: list[str]) -> None:
        for start in range(0, len(receipts), BATCH):
            entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": receipt, "VisibilityTimeout": 0}
                for i, receipt in enumerate(receipts[start : start + BATCH])
            ]
            self.sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)

    def close(self) -> None:
        """Stop consumers still running and close the clients; the next call reconnects."""
        with self._lock:
            consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            consumer.stop(timeout=self.wait + 5.0)
        with self._lock:
            clients = [c for c in (self._sns, self._sqs) if c is not None]
            self._sns = self._sqs = None
        for client in clients:
            client.close()

    def __repr__(self) -> str:
        return f"<SqsBackend {self._where()} prefix={self.names.prefix!r}>"


def _chunks(batch: list[wire.Outgoing]) -> Iterator[list[wire.Outgoing]]:
    """Runs of at most 10 messages and at most 256 KiB in all, in order."""
    chunk: list[wire.Outgoing] = []
    size = 0
    for outgoing in batch:
        if chunk and (len(chunk) == BATCH or size + outgoing.size > wire.MAX_MESSAGE_SIZE):
            yield chunk
            chunk, size = [], 0
        chunk.append(outgoing)
        size += outgoing.size
    if chunk:
        yield chunk


def batch_failures(
    topic: str,
    chunk: Sequence[wire.Outgoing],
    accepted: set[str | None],
    failed: Sequence[BatchResultErrorEntryTypeDef],
) -> list[FailedEntry]:
    """The entries of a batch call that were not accepted, with SNS/SQS's reason.

    An entry the response lists neither as successful nor as failed counts
    as failed: only an explicit success is a confirmation.
    """
    reasons = {entry.get("Id"): f"{entry.get('Code', 'error')}: {entry.get('Message', '')}" for entry in failed}
    return [
        FailedEntry(topic, outgoing.envelope, reasons.get(str(i), "the broker did not confirm it"))
        for i, outgoing in enumerate(chunk)
        if str(i) not in accepted or str(i) in reasons
    ]
