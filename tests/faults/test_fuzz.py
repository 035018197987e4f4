"""Generated poison: whatever arrives, it is dead-lettered with a reason and the worker lives on."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus import Bus, Registry, wait_until
from eventbus.backends.memory import MemoryBackend
from eventbus.dispatch import Outcome
from eventbus.envelope import Envelope
from tests.faults.harness import Figures

registry = Registry()


@registry.message(topic="fuzz")
@attrs.frozen
class Order:
    order_id: str
    amount: int
    lines: list[str]


handled: list[Order] = []


@registry.subscribe(Order)
def take(event: Order) -> None:
    handled.append(event)


REASONS = {
    "unknown-manifest",
    "no-handler",
    "undecodable",
    "unknown-serializer",
    "unknown-content-type",
    "unsafe-serializer",
}
text = st.text(string.printable, max_size=30)
header_values: st.SearchStrategy[Any] = st.one_of(text, st.binary(max_size=20), st.integers(), st.none())
headers = st.fixed_dictionaries(
    {},
    optional={
        "manifest": st.sampled_from(["Order", "", "Nope", "order"]) | text,
        "content-type": st.sampled_from(["application/json", "text/xml", ""]) | text,
        "serializer": st.sampled_from(["json", "pickle", "yaml"]) | text,
        "attempt": header_values,
        "message-id": header_values,
        "timestamp": header_values,
        "correlation-id": header_values,
    },
).flatmap(lambda fixed: st.dictionaries(text, header_values, max_size=4).map(lambda extra: {**extra, **fixed}))
bodies = st.one_of(
    st.binary(max_size=200),
    st.just(b'{"order_id": 1, "amount": "x", "lines": null}'),
    st.recursive(
        st.none() | st.booleans() | st.integers() | text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_leaves=10,
    ).map(lambda value: __import__("json").dumps(value).encode()),
)


def test_a_thousand_fuzzed_envelopes(record: Callable[..., Figures]) -> None:
    bus = Bus("fuzz", "memory://fuzz-faults", registry=registry)
    dispatcher = bus.dispatchers()["fuzz"]
    outcomes: list[Outcome] = []

    class Settle:
        def __init__(self, envelope: Envelope) -> None:
            self.envelope, self.queue = envelope, "fuzz"

        def ack(self) -> None: ...
        def retry(self, envelope: Envelope, delay: float) -> None: ...
        def dead_letter(self, envelope: Envelope) -> None: ...

    @settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies, wire=headers)
    def fuzz(body: bytes, wire: dict[str, Any]) -> None:
        envelope = Envelope.from_wire(body, wire)  # never raises, whatever the headers
        outcome = dispatcher(Settle(envelope))  # never raises, whatever the body
        outcomes.append(outcome)
        if outcome.action == "dead_letter":
            assert outcome.reason in REASONS, outcome.reason
            assert outcome.envelope.headers["error-reason"] == outcome.reason
        else:  # the fuzzer produced a valid Order: it was handled
            assert outcome.action == "ack"
            assert isinstance(outcome.message, Order)

    fuzz()
    dead = sum(o.action == "dead_letter" for o in outcomes)
    record(Figures("memory", "1000 fuzzed envelopes", sent=len(outcomes), handled=len(outcomes) - dead))
    assert len(outcomes) >= 1000

    # And through live worker threads: the poison is parked, the next good message is handled.
    bus.start()
    backend = bus.backend
    assert isinstance(backend, MemoryBackend)
    for outcome in outcomes[:200]:
        backend.send("fuzz", attrs.evolve(outcome.envelope, headers={}))
    bus.publish(Order("last", 1, []))
    wait_until(lambda: handled and handled[-1] == Order("last", 1, []), 10)
    bus.stop()
