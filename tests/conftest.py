"""Shared fixtures. tests/ is not a package: pytest puts this folder on sys.path (rootdir
conftest, default "prepend" import mode), so helpers such as mqtt_client import directly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inspectd.mqtt.broker import LocalBroker, find_mosquitto


@pytest.fixture
def mosquitto() -> Iterator[LocalBroker]:
    """A private mosquitto on a free 127.0.0.1 port (never the system one on 1883)."""
    if find_mosquitto() is None:
        pytest.skip(
            "mosquitto is not installed (apt-get install mosquitto; `make test` installs it)"
        )
    with LocalBroker.start_mosquitto() as broker:
        yield broker


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """A test that configures logging binds it to that test's captured stream, which pytest
    closes afterwards; later tests in the same process must not log into it."""
    yield
    import structlog

    structlog.reset_defaults()
