from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import uuid
from typing import Any, Optional, Union

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventbus import Bus, ConfigurationError, JsonSerializer, Registry, SerializationError

registry = Registry()


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Size(enum.IntEnum):
    S = 1
    L = 3


@attrs.frozen
class Line:
    sku: str
    quantity: int


@dataclasses.dataclass(frozen=True)
class Note:
    text: str


@attrs.frozen
class Refund:
    amount: decimal.Decimal


@attrs.frozen
class Voucher:
    amount: decimal.Decimal  # same fields as Refund: only the union tag tells them apart


@registry.message(topic="everything")
@attrs.frozen
class Everything:
    text: str
    number: int
    ratio: float
    flag: bool
    when: dt.datetime
    day: dt.date
    amount: decimal.Decimal
    uid: uuid.UUID
    raw: bytes
    colour: Colour
    size: Size
    maybe: Optional[int]
    either: Union[int, str]
    lines: list[Line]
    notes: tuple[Note, ...]
    counts: dict[str, int]
    by_id: dict[uuid.UUID, Line]
    tags: frozenset[str]
    adjustment: Union[Refund, Voucher]
    maybe_adjustment: Optional[Union[Refund, Voucher]]
    nested: Optional[Line] = None


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None)
lines = st.builds(Line, text, st.integers())
adjustments = st.one_of(st.builds(Refund, decimals), st.builds(Voucher, decimals))
everything = st.builds(
    Everything,
    text=text,
    number=st.integers(),
    ratio=st.floats(allow_nan=False, allow_infinity=False),
    flag=st.booleans(),
    # A zone travels as its UTC offset (ISO 8601): generate fixed offsets.
    when=st.datetimes(timezones=st.integers(-1439, 1439).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))),
    day=st.dates(),
    amount=decimals,
    uid=st.uuids(),
    raw=st.binary(max_size=40),
    colour=st.sampled_from(Colour),
    size=st.sampled_from(Size),
    maybe=st.none() | st.integers(),
    either=st.integers() | text,
    lines=st.lists(lines, max_size=3),
    notes=st.lists(st.builds(Note, text), max_size=3).map(tuple),
    counts=st.dictionaries(text, st.integers(), max_size=3),
    by_id=st.dictionaries(st.uuids(), lines, max_size=2),
    tags=st.frozensets(text, max_size=3),
    adjustment=adjustments,
    maybe_adjustment=st.none() | adjustments,
    nested=st.none() | lines,
)


@settings(max_examples=200, deadline=None)
@given(everything)
def test_json_round_trip_is_exact(message: Everything) -> None:
    serializer = JsonSerializer()
    body = serializer.encode(message, Everything)
    json.loads(body)  # plain JSON that any reader can parse
    decoded = serializer.decode(body, Everything)
    assert decoded == message
    assert type(decoded.adjustment) is type(message.adjustment)


def test_round_trip_through_the_bus() -> None:
    received: list[Everything] = []
    local = Registry()
    local.subscribe(Everything)(received.append)
    bus = Bus("svc", "memory://round-trip", registry=local)
    sample = Everything(
        text="héllo ✓",
        number=2**70,
        ratio=0.1,
        flag=True,
        when=dt.datetime(2026, 11, 22, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        day=dt.date(2026, 1, 31),
        amount=decimal.Decimal("12.30"),
        uid=uuid.uuid4(),
        raw=b"\x00\xff",
        colour=Colour.GREEN,
        size=Size.L,
        maybe=None,
        either="7",
        lines=[Line("sku", 2)],
        notes=(Note("n"),),
        counts={"a": 1},
        by_id={uuid.uuid4(): Line("x", 1)},
        tags=frozenset({"t"}),
        adjustment=Voucher(decimal.Decimal("5")),
        maybe_adjustment=Refund(decimal.Decimal("1.5")),
    )
    with bus.testing():
        bus.publish(sample)
    assert received == [sample]


def test_strict_json_refuses_nan_with_a_clear_error() -> None:
    local = Registry()

    @local.message(topic="metrics")
    @attrs.frozen
    class Reading:
        value: float

    bus = Bus("svc", "memory://nan", registry=local)
    with pytest.raises(SerializationError, match=r"cannot encode .*Reading with serializer 'json'.*Out of range"):
        bus.publish(Reading(math.nan))


# -- pickle ---------------------------------------------------------------


@registry.message(topic="legacy", serializer="pickle")
@attrs.frozen
class Legacy:
    payload: Any


@pytest.fixture
def pickled() -> type:
    return Legacy  # module level: pickle needs an importable class


def test_pickle_encoding_needs_opt_in(registry: Registry, pickled: type, memory_url: str) -> None:
    bus = Bus("svc", memory_url, registry=registry)
    with pytest.raises(ConfigurationError, match=r"cannot publish .*Legacy with 'pickle': it executes code"):
        bus.publish(pickled({"a": 1}))


def test_handling_a_pickle_type_needs_opt_in_at_construction(registry: Registry, pickled: type) -> None:
    registry.subscribe(pickled)(lambda event: None)
    with pytest.raises(ConfigurationError, match=r"handles .*Legacy.*allow_pickle=True"):
        Bus("svc", "memory://", registry=registry)


def test_pickle_works_with_opt_in(registry: Registry, pickled: type, memory_url: str) -> None:
    received: list[Any] = []
    registry.subscribe(pickled)(received.append)
    bus = Bus("svc", memory_url, registry=registry, allow_pickle=True)
    with bus.testing():
        bus.publish(pickled({"a": {1, 2}}))
    assert received == [pickled({"a": {1, 2}})]


def test_a_bus_without_opt_in_dead_letters_pickle_bodies(registry: Registry, memory_url: str) -> None:
    """A json type received with a pickle body (a hostile producer) is never unpickled."""

    @registry.message(topic="orders")
    @attrs.frozen
    class Order:
        order_id: str

    ran: list[object] = []
    registry.subscribe(Order)(ran.append)
    bus = Bus("svc", memory_url, registry=registry)
    import pickle

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (ran.append, ("pwned",))

    with bus.testing() as t:
        t.deliver("svc", pickle.dumps(Boom()), {"manifest": "Order", "serializer": "pickle"})
    assert ran == []
    (dead,) = t.dead_letters
    assert dead.reason == "unsafe-serializer"
    assert "allow_pickle=True" in dead.headers["error-message"]


# -- custom serializers and bindings -------------------------------------------


class Upper:
    """A toy serializer: 'key=value' lines, upper-cased values."""

    name = "upper"
    content_type = "text/x-upper"

    def encode(self, message: Any, cls: type[Any]) -> bytes:
        return "\n".join(f"{k}={v}" for k, v in attrs.asdict(message).items()).upper().encode()

    def decode(self, data: bytes, cls: type[Any]) -> Any:
        fields = dict(line.split("=", 1) for line in data.decode().lower().splitlines())
        return cls(**fields)


def test_custom_serializer_by_name_and_by_base_class_binding(registry: Registry, memory_url: str) -> None:
    registry.add_serializer(Upper())

    class DomainEvent:
        pass

    class SpecialEvent(DomainEvent):
        pass

    registry.bind_serializer(DomainEvent, "upper")
    registry.bind_serializer(SpecialEvent, "json")

    @registry.message(topic="a")
    @attrs.frozen
    class Bound(DomainEvent):
        word: str

    @registry.message(topic="a")
    @attrs.frozen
    class MoreSpecific(SpecialEvent):
        word: str

    @registry.message(topic="a", serializer="json")
    @attrs.frozen
    class OwnChoice(DomainEvent):
        word: str

    @registry.message(topic="a")
    @attrs.frozen
    class Unbound:
        word: str

    received: list[Any] = []
    registry.subscribe(Bound, MoreSpecific, OwnChoice, Unbound)(received.append)
    bus = Bus("svc", memory_url, registry=registry)
    with bus.testing() as t:
        for cls in (Bound, MoreSpecific, OwnChoice, Unbound):
            bus.publish(cls("hi"))
    assert [env.serializer for _, env in t.envelopes] == ["upper", "json", "json", "json"]
    assert t.envelopes[0][1].body == b"WORD=HI"
    assert t.envelopes[0][1].content_type == "text/x-upper"
    assert received == [Bound("hi"), MoreSpecific("hi"), OwnChoice("hi"), Unbound("hi")]


def test_bus_default_serializer_applies_to_unbound_types(registry: Registry, memory_url: str) -> None:
    registry.add_serializer(Upper())

    @registry.message(topic="a")
    @attrs.frozen
    class Plain:
        word: str

    bus = Bus("svc", memory_url, registry=registry, serializer="upper")
    with bus.testing() as t:
        bus.publish(Plain("x"))
    assert t.envelopes[0][1].serializer == "upper"


def test_add_serializer_refuses_silent_replacement(registry: Registry) -> None:
    with pytest.raises(ConfigurationError, match="already registered; pass replace=True"):
        registry.add_serializer(JsonSerializer())
    registry.add_serializer(JsonSerializer(), replace=True)
    with pytest.raises(ConfigurationError, match="is not a serializer: it has no 'name'"):
        registry.add_serializer(object())  # type: ignore[arg-type]


def test_content_type_selects_the_serializer_when_no_serializer_header(registry: Registry, memory_url: str) -> None:
    @registry.message(topic="orders")
    @attrs.frozen
    class Order:
        order_id: str

    received: list[Any] = []
    registry.subscribe(Order)(received.append)
    bus = Bus("svc", memory_url, registry=registry)
    with bus.testing() as t:
        t.deliver(
            "svc", b'{"order_id": "o-1"}', {"manifest": "Order", "content-type": "application/json; charset=utf-8"}
        )
        t.deliver("svc", b'{"order_id": "o-2"}', {"manifest": "Order"})
        t.deliver("svc", b"<order/>", {"manifest": "Order", "content-type": "application/xml"})
    assert received == [Order("o-1"), Order("o-2")]
    assert [d.reason for d in t.dead_letters] == ["unknown-content-type"]
