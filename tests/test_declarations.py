from __future__ import annotations

import dataclasses
import sys
import types

import attrs
import pytest

from eventbus import Bus, ConfigurationError, Context, DeclarationError, Registry
from eventbus.specs import message_spec


def test_manifest_defaults_to_class_name_and_name_overrides(registry: Registry) -> None:
    @registry.message(topic="orders")
    @attrs.frozen
    class OrderPlaced:
        order_id: str

    @registry.message(topic="orders", name="order.cancelled", version=2)
    @dataclasses.dataclass
    class OrderCancelled:
        order_id: str

    assert message_spec(OrderPlaced).manifest == "OrderPlaced"  # type: ignore[union-attr]
    assert message_spec(OrderCancelled).manifest == "order.cancelled.v2"  # type: ignore[union-attr]
    assert registry.find("order.cancelled.v2").cls is OrderCancelled  # type: ignore[union-attr]


def test_version_is_part_of_the_wire_identity(registry: Registry) -> None:
    @registry.message(topic="orders", name="OrderPlaced", version=1)
    @attrs.frozen
    class OrderPlacedV1:
        order_id: str

    @registry.message(topic="orders", version=2)
    @attrs.frozen
    class OrderPlaced:
        order_id: str
        amount: int

    assert {m.manifest for m in registry.messages()} == {"OrderPlaced.v1", "OrderPlaced.v2"}


def test_two_types_with_one_manifest_fail_naming_both(registry: Registry) -> None:
    @registry.message(topic="orders", name="Placed")
    @attrs.frozen
    class A:
        x: int

    with pytest.raises(DeclarationError, match=r"'Placed' is already used by .*A.*name= or a version="):

        @registry.message(topic="orders", name="Placed")
        @attrs.frozen
        class B:
            x: int


@pytest.mark.parametrize("topic", ["", "orders events", "orders.v1", "a/b", 7, "x" * 201])
def test_invalid_topic_names_fail(registry: Registry, topic: object) -> None:
    with pytest.raises(DeclarationError, match=r"@message on .*Thing: the topic name"):

        @registry.message(topic=topic)  # type: ignore[arg-type]
        @attrs.frozen
        class Thing:
            x: int


def test_fifo_suffix_is_a_valid_topic(registry: Registry) -> None:
    @registry.message(topic="orders.fifo", group_by="order_id")
    @attrs.frozen
    class Ordered:
        order_id: str

    assert message_spec(Ordered).group_by == "order_id"  # type: ignore[union-attr]


def test_message_must_sit_above_the_attrs_decorator(registry: Registry) -> None:
    with pytest.raises(DeclarationError, match=r"Plain must be an attrs class or a dataclass.*Put @message above"):

        @registry.message(topic="orders")
        class Plain:
            pass


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"version": 0}, "version=0 must be a positive integer"),
        ({"version": True}, "version=True"),
        ({"name": "has space"}, "name='has space'"),
        ({"name": "wild.*"}, r"name='wild\.\*'"),
        ({"serializer": ""}, "serializer=''"),
        ({"group_by": "x"}, "group_by='x' needs a FIFO topic"),
    ],
)
def test_bad_message_options(registry: Registry, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DeclarationError, match=match):

        @registry.message(topic="orders", **kwargs)  # type: ignore[arg-type]
        @attrs.frozen
        class Thing:
            x: int


def test_group_by_must_be_a_field(registry: Registry) -> None:
    with pytest.raises(DeclarationError, match=r"group_by='nope' is not a field of .*Thing"):

        @registry.message(topic="t.fifo", group_by="nope")
        @attrs.frozen
        class Thing:
            x: int


def test_declaring_twice_fails(registry: Registry) -> None:
    @attrs.frozen
    class Thing:
        x: int

    registry.message(topic="t")(Thing)
    with pytest.raises(DeclarationError, match="already declared"):
        registry.message(topic="t")(Thing)


@pytest.fixture
def placed(registry: Registry) -> type:
    @registry.message(topic="orders")
    @attrs.frozen
    class OrderPlaced:
        order_id: str

    return OrderPlaced


def test_handler_for_an_undeclared_type_fails_naming_both(registry: Registry) -> None:
    @attrs.frozen
    class NotAMessage:
        x: int

    with pytest.raises(DeclarationError, match=r"@subscribe on .*handle: .*NotAMessage is not a message type"):

        @registry.subscribe(NotAMessage)
        def handle(event: NotAMessage) -> None: ...


def test_subscribe_needs_a_type(registry: Registry) -> None:
    with pytest.raises(DeclarationError, match="name at least one message type"):

        @registry.subscribe()
        def handle(event: object) -> None: ...


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("def h(a, b, c): pass", r"requires 3 arguments \['a', 'b', 'c'\]"),
        ("def h(event, *, flag): pass", r"keyword-only parameters \['flag'\]"),
        ("def h(): pass", "takes no positional argument"),
        ("def h(**kw): pass", "takes no positional argument"),
    ],
)
def test_handler_signatures_that_cannot_be_called_fail(
    registry: Registry, placed: type, source: str, match: str
) -> None:
    namespace: dict[str, object] = {}
    exec(source, namespace)
    with pytest.raises(DeclarationError, match=match):
        registry.subscribe(placed)(namespace["h"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "takes_context"),
    [
        ("def h(event): pass", False),
        ("def h(event, ctx): pass", True),
        ("def h(event, ctx=None): pass", True),
        ("def h(event, *, flag=False): pass", False),
        ("def h(*args): pass", True),
        ("async def h(event, ctx): pass", True),
    ],
)
def test_handler_signatures_that_work(registry: Registry, placed: type, source: str, takes_context: bool) -> None:
    namespace: dict[str, object] = {"__name__": "handlers"}
    exec(source, namespace)
    fn = registry.subscribe(placed)(namespace["h"])  # type: ignore[arg-type]
    (spec,) = registry.handlers()
    assert spec.fn is fn
    assert spec.takes_context is takes_context
    assert spec.is_async is source.startswith("async")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"retries": -1}, "retries=-1 must be an integer >= 0"),
        ({"retries": 1.5}, "retries=1.5"),
        ({"backoff": "soon"}, "backoff must be a number of seconds or a Backoff"),
        ({"backoff": -1}, "Backoff.initial must be >= 0"),
        ({"on_failure": "explode"}, "on_failure='explode' must be one of"),
        ({"queue": "bad queue"}, "the queue name 'bad queue'"),
    ],
)
def test_bad_subscribe_options(registry: Registry, placed: type, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DeclarationError, match=match):

        @registry.subscribe(placed, **kwargs)  # type: ignore[arg-type]
        def handle(event: object) -> None: ...


def test_stacked_decorators_and_tuples_subscribe_to_several_types(registry: Registry) -> None:
    @registry.message(topic="a")
    @attrs.frozen
    class A:
        x: int

    @registry.message(topic="b")
    @attrs.frozen
    class B:
        x: int

    @registry.message(topic="c")
    @attrs.frozen
    class C:
        x: int

    @registry.subscribe(A)
    @registry.subscribe((B, C), retries=1)
    def handle(event: object) -> None: ...

    specs = registry.handlers()
    assert sorted(tp.__name__ for spec in specs for tp in spec.types) == ["A", "B", "C"]
    with pytest.raises(DeclarationError, match=r"already subscribes to .*A$"):
        registry.subscribe(A)(handle)


def test_class_based_handlers_are_bound_by_include(registry: Registry, placed: type, memory_url: str) -> None:
    class Payments:
        def __init__(self, gateway: list[str]) -> None:
            self.gateway = gateway

        @registry.subscribe(placed)
        def charge(self, event: placed, ctx: Context) -> None:  # type: ignore[valid-type]
            self.gateway.append(event.order_id)  # type: ignore[attr-defined]

    assert registry.handlers() == []  # methods wait to be bound
    charged: list[str] = []
    bus = Bus("payments", memory_url, registry=registry).include(Payments(charged))
    assert [h.name for h in bus.handlers] == [f"{Payments.__module__}.{Payments.__qualname__}.charge"]
    with bus.testing():
        bus.publish(placed("o-1"))
    assert charged == ["o-1"]


def test_include_rejects_classes_and_plain_objects(registry: Registry, memory_url: str) -> None:
    bus = Bus("svc", memory_url, registry=registry)
    with pytest.raises(DeclarationError, match="got a class; pass an instance"):
        bus.include(Bus)
    with pytest.raises(DeclarationError, match="has no @subscribe methods"):
        bus.include(object())


def test_include_module_selects_its_handlers(registry: Registry, placed: type, memory_url: str) -> None:
    module = types.ModuleType("fake_payments")
    sys.modules["fake_payments"] = module
    try:
        exec("def charge(event): pass\ncharge.__module__ = 'fake_payments'", module.__dict__)
        registry.subscribe(placed)(module.charge)

        def elsewhere(event: object) -> None: ...

        registry.subscribe(placed)(elsewhere)
        everything = Bus("svc", memory_url, registry=registry)
        assert len(everything.handlers) == 2
        only = Bus("svc", memory_url, registry=registry).include("fake_payments")
        assert [h.name for h in only.handlers] == ["fake_payments.charge"]
    finally:
        del sys.modules["fake_payments"]


def test_unknown_serializer_fails_at_bus_construction(registry: Registry, memory_url: str) -> None:
    @registry.message(topic="orders", serializer="protobuf")
    @attrs.frozen
    class Thing:
        x: int

    with pytest.raises(ConfigurationError, match=r"Thing uses serializer 'protobuf', which is not registered"):
        Bus("svc", memory_url, registry=registry)


def test_unknown_default_serializer_fails(registry: Registry, memory_url: str) -> None:
    with pytest.raises(ConfigurationError, match="no serializer named 'yaml'"):
        Bus("svc", memory_url, registry=registry, serializer="yaml")


@pytest.mark.parametrize("service", ["", "pay ments", "x" * 71])
def test_invalid_service_names(registry: Registry, service: str) -> None:
    with pytest.raises(DeclarationError, match="service name"):
        Bus(service, "memory://", registry=registry)


def test_unknown_url_scheme(registry: Registry) -> None:
    with pytest.raises(ConfigurationError, match=r"no backend for 'kafka://u:\*\*\*@host:9092'"):
        Bus("svc", "kafka://u:secret@host:9092", registry=registry)


def test_reloading_a_module_replaces_its_declarations(registry: Registry) -> None:
    source = (
        "import attrs\n"
        "@registry.message(topic='t')\n@attrs.frozen\nclass Reloaded:\n    x: int\n"
        "@registry.subscribe(Reloaded)\ndef handle(event): pass\n"
    )
    for _ in range(2):
        namespace = {"registry": registry, "__name__": "reloaded_module"}
        exec(source, namespace)
    assert [m.manifest for m in registry.messages()] == ["Reloaded"]
    assert len(registry.handlers()) == 1


def test_handlers_declared_after_the_bus_are_picked_up(registry: Registry, placed: type, memory_url: str) -> None:
    bus = Bus("svc", memory_url, registry=registry)
    assert bus.topology().queues == ()
    seen: list[object] = []
    registry.subscribe(placed)(seen.append)  # e.g. a handlers module imported after the bus
    assert [q.name for q in bus.topology().queues] == ["svc"]
    with bus.testing():
        bus.publish(placed("o-1"))
    assert seen == [placed("o-1")]


def test_include_a_package_imports_its_submodules() -> None:
    from tests.fixtures.fakepkg import messages

    bus = Bus("pkg", "memory://pkg", registry=messages.registry).include("tests.fixtures.fakepkg")
    assert [h.name for h in bus.handlers] == ["tests.fixtures.fakepkg.sub.handlers.on_ping"]
    with bus:  # start ... stop
        bus.publish(messages.Ping(1))
        from eventbus import wait_until

        wait_until(lambda: messages.seen == [messages.Ping(1)])
    assert not bus.running


def test_two_handlers_with_one_name_fail(registry: Registry, placed: type) -> None:
    registry.subscribe(placed)(lambda event: None)
    with pytest.raises(DeclarationError, match=r"another handler of .*OrderPlaced has the same name"):
        registry.subscribe(placed)(lambda event: None)
