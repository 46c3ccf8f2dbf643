"""kernel.logs: what the processes' logs let through."""

from __future__ import annotations

import logging

import pytest

from kernel.logs import RepeatsOnceInAWhile


def record(name: str, message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, message, args, None)


def test_a_librarys_repeated_message_is_let_through_once_in_a_while_with_the_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("kernel.logs.time.monotonic", lambda: now[0])
    limiter = RepeatsOnceInAWhile(("aiokafka",), every=30)
    unable = "Unable connect to node with id %s: %s"

    shown = [limiter.filter(record("aiokafka.conn", unable, 1, "refused")) for _ in range(100)]
    assert shown == [True] + [False] * 99
    # The hub's own records, and another message of the library, are never held back.
    assert limiter.filter(record("gateway.engine", "delivery failed"))
    assert limiter.filter(record("aiokafka.consumer", "Heartbeat failed"))

    now[0] += 31
    again = record("aiokafka.conn", unable, 1, "refused")
    assert limiter.filter(again)
    assert again.getMessage() == (
        "Unable connect to node with id 1: refused (and 99 more like it since)"
    )
