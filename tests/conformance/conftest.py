from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.harness import HARNESSES, Harness


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """Each conformance test runs once per backend."""
    made = HARNESSES[request.param]()
    try:
        yield made
    finally:
        made.close()
