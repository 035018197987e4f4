"""pytest plugin (registered through the ``pytest11`` entry point).

Define a fixture named ``bus`` that returns your :class:`eventbus.Bus`, and
take ``eventbus_testing`` in a test to run it inside ``bus.testing()``::

    @pytest.fixture
    def bus():
        return Bus(service="payments").include("payments.handlers")

    def test_charge(bus, eventbus_testing):
        bus.publish(OrderPlaced("o-1", 1200))
        assert eventbus_testing.published(PaymentCharged) == [PaymentCharged("o-1")]
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventbus.testing import Testing


@pytest.fixture
def eventbus_testing(request: pytest.FixtureRequest) -> Iterator[Testing]:
    """A ``bus.testing()`` session over the ``bus`` fixture, closed after the test."""
    bus = request.getfixturevalue("bus")
    with bus.testing() as session:
        yield session
