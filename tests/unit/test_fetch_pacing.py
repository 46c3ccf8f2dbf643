"""kernel.kafka.FetchPacing: a consumer waits long on the broker once idle, short when busy."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from kernel.kafka import FetchPacing


def started_consumer(wait_ms: int) -> Any:
    """What FetchPacing touches of a started aiokafka consumer: its fetcher's wait."""
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_max_wait_ms=wait_ms))


def test_an_idle_consumer_waits_long_and_the_first_record_brings_the_short_wait_back() -> None:
    consumer = started_consumer(20)
    pacing = FetchPacing(consumer, 20, idle_wait_ms=500, idle_after=0.05)

    pacing.note(False)  # empty, but not for long yet
    assert consumer._fetcher._fetch_max_wait_ms == 20
    time.sleep(0.06)
    pacing.note(False)
    assert consumer._fetcher._fetch_max_wait_ms == 500 and pacing.wait_ms == 500
    pacing.note(True)
    assert consumer._fetcher._fetch_max_wait_ms == 20
    pacing.note(False)  # records a moment ago: still busy
    assert consumer._fetcher._fetch_max_wait_ms == 20


def test_a_wait_already_long_is_kept_and_a_consumer_without_a_fetcher_is_left_alone() -> None:
    on_a_cluster = started_consumer(500)
    pacing = FetchPacing(on_a_cluster, 500, idle_wait_ms=100, idle_after=0)
    pacing.note(False)
    assert on_a_cluster._fetcher._fetch_max_wait_ms == 500

    not_started = SimpleNamespace(_fetcher=None)
    pacing = FetchPacing(not_started, 20, idle_after=0)  # type: ignore[arg-type]
    pacing.note(False)
    assert pacing.wait_ms == 20
