"""Fixtures for the CLI tests: an app module written per test in a directory of its own, on each backend."""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import boto3
import pytest
import redis

from eventbus.cli import main
from tests import moto_server

REDIS_URL = os.environ.get("EVENTBUS_REDIS_URL", "redis://127.0.0.1:6379/0")
#: The RabbitMQ broker without a vhost: each test gets a vhost of its own.
RABBITMQ_URL = os.environ.get("EVENTBUS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F").rsplit("/", 1)[0]
RABBITMQ_USER = urlsplit(RABBITMQ_URL).username or "guest"

#: The app every test runs: two message types on two topics, handled on two queues.
#: ``charge`` fails while ``failing["on"]``; it retries once, then the message is dead-lettered.
APP = '''
from attrs import frozen
from eventbus import Bus, Context, Registry

registry = Registry()
failing = {{"on": True}}
handled = []


@registry.message(topic="orders")
@frozen
class OrderPlaced:
    """A customer placed an order."""

    order_id: str
    amount_cents: int


@registry.message(topic="payments")
@frozen
class PaymentTaken:
    order_id: str


@registry.subscribe(OrderPlaced, retries=1, backoff=0.05)
def charge(event: OrderPlaced, ctx: Context) -> None:
    if failing["on"]:
        raise ValueError(f"card declined for {{event.order_id}}")
    handled.append((ctx.message_id, ctx.attempt, event))


@registry.subscribe(PaymentTaken, queue="audit", on_failure="dead_letter")
def audit(event: PaymentTaken) -> None:
    if failing["on"]:
        raise RuntimeError("audit log is read-only")
    handled.append(("audit", event))


bus = Bus("payments", {url!r}, registry=registry, concurrency=2)
{extra}
'''


#: A backend with only the core Backend methods: no inspect(), no dead-letter tools.
PLAIN_BACKEND = """
from eventbus.backends.memory import MemoryBackend


class Plain:
    def __init__(self):
        self.inner = MemoryBackend()

    def provision(self, topology):
        self.inner.provision(topology)

    def publish(self, topic, envelope):
        self.inner.publish(topic, envelope)

    def publish_many(self, messages):
        self.inner.publish_many(messages)

    def send(self, queue, envelope):
        self.inner.send(queue, envelope)

    def consume(self, queue, handler, *, concurrency, prefetch):
        return self.inner.consume(queue, handler, concurrency=concurrency, prefetch=prefetch)

    def dead_letters(self, queue, limit):
        return self.inner.dead_letters(queue, limit)

    def close(self):
        pass


plain = Bus("payments", registry=registry, backend=Plain())
"""


class App:
    """One generated app module: its target string, and the module itself once imported."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.target = f"{name}:bus"

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(self.name)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test's own current directory; sys.path and sys.modules are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", "")).startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def make_app(workdir: Path) -> Iterator[Callable[..., App]]:
    """Write an app module for ``url`` (plus ``extra`` source lines) in the test's directory."""
    made: list[App] = []

    def make(url: str, extra: str = "") -> App:
        app = App(f"app_{uuid.uuid4().hex[:10]}", url)
        (workdir / f"{app.name}.py").write_text(APP.format(url=url, extra=textwrap.dedent(extra)))
        made.append(app)
        return app

    yield make
    for app in made:
        module = sys.modules.get(app.name)
        if module is not None:
            module.bus.stop(timeout=5)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis; the tests fail (never skip) if it is down."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); start it (.ci/run does) or set EVENTBUS_REDIS_URL")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    prefix = f"eventbus-cli-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ vhost of this test alone (so the app's fixed names are its own), deleted afterwards."""
    vhost = f"eventbus-cli-{uuid.uuid4().hex[:12]}"
    rabbitmqctl = shutil.which("rabbitmqctl") or "rabbitmqctl"  # the test may take it off PATH meanwhile
    for command in (["add_vhost", vhost], ["set_permissions", "-p", vhost, RABBITMQ_USER, ".*", ".*", ".*"]):
        done = subprocess.run([rabbitmqctl, "-q", *command], capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            pytest.fail(f"rabbitmqctl {command[0]} failed ({done.stderr.strip()}); is RabbitMQ running?")
    yield f"{RABBITMQ_URL}/{vhost}?retry_delays=0.1,1&connection_name={vhost}"
    done = subprocess.run(
        [rabbitmqctl, "-q", "delete_vhost", vhost], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"rabbitmqctl delete_vhost {vhost} failed: {done.stderr.strip()}")


@pytest.fixture
def sqs_url() -> Iterator[str]:
    """An sqs:// URL on the shared local SNS/SQS server, with a name prefix of this test; its resources go after."""
    prefix = f"cli{uuid.uuid4().hex[:8]}-"
    yield moto_server.sqs_url(prefix=prefix)
    endpoint = moto_server.shared().url
    options = {"region_name": moto_server.REGION, "endpoint_url": endpoint}
    keys = {"aws_access_key_id": moto_server.KEY, "aws_secret_access_key": moto_server.SECRET}
    sqs, sns = boto3.client("sqs", **options, **keys), boto3.client("sns", **options, **keys)
    for queue in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=queue)
    for topic in sns.list_topics().get("Topics", []):
        if topic["TopicArn"].rsplit(":", 1)[-1].startswith(prefix):
            sns.delete_topic(TopicArn=topic["TopicArn"])


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("sqs", marks=pytest.mark.sqs),
    ]
)
def url(request: pytest.FixtureRequest) -> str:
    """A broker URL private to the test: memory, Redis with its own key prefix, a RabbitMQ vhost, SQS with a prefix."""
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if request.param == "rabbitmq":
        return str(request.getfixturevalue("rabbitmq_url"))
    if request.param == "sqs":
        return str(request.getfixturevalue("sqs_url"))
    redis_url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return f"{redis_url}?prefix={prefix}&reclaim=1&block=0.2"


@pytest.fixture
def app(url: str, make_app: Callable[..., App]) -> App:
    """The app on the test's broker (set up before the app, so the app's bus stops before the broker is cleaned)."""
    return make_app(url)


@pytest.fixture
def free_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``eventbus ARGS...`` in-process: ``(exit code, stdout, stderr)``."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def plain_app(make_app: Callable[..., App]) -> App:
    """An app whose ``plain`` bus has a backend with only the core methods (no inspect, no dead-letter tools)."""
    return make_app("memory://", extra=PLAIN_BACKEND)
