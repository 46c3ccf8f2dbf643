"""kernel.kafka.OffsetCommits: the consumers' loops commit behind themselves, in order."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import REGISTRY

from kernel.kafka import OffsetCommits

FIRST, SECOND = TopicPartition("courrier.events", 0), TopicPartition("courrier.events", 1)


def fetched(partition: TopicPartition, *offsets: int) -> dict[TopicPartition, list[Any]]:
    return {partition: [SimpleNamespace(offset=offset) for offset in offsets]}


class SlowCoordinator:
    """A consumer whose commits each wait until the test lets them through."""

    def __init__(self) -> None:
        self.started: list[dict[TopicPartition, int]] = []
        self.done: list[dict[TopicPartition, int]] = []
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None
        #: What the broker said it holds, per partition, at the last fetch.
        self.highwaters: dict[TopicPartition, int] = {}
        self.assigned = {FIRST, SECOND}

    def highwater(self, partition: TopicPartition) -> int | None:
        assert partition in self.assigned, "Partition is not assigned"  # as aiokafka does
        return self.highwaters.get(partition)

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not set(offsets) <= self.assigned:  # as aiokafka does
            raise IllegalStateError(f"partitions {set(offsets) - self.assigned} not assigned")
        self.started.append(offsets)
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.done.append(offsets)


async def test_the_loop_goes_on_while_its_commit_is_in_flight() -> None:
    coordinator = SlowCoordinator()
    commits = OffsetCommits(coordinator, "test")

    await commits.commit({**fetched(FIRST, 7, 8, 9), **fetched(SECOND, 3)})
    await asyncio.sleep(0)  # the commit's task starts, and waits for the broker

    # Returned at once, the offsets being those after each partition's last record.
    assert coordinator.started == [{FIRST: 10, SECOND: 4}]
    assert coordinator.done == []
    coordinator.release.set()
    await commits.drain()
    assert coordinator.done == [{FIRST: 10, SECOND: 4}]


async def test_a_commit_waits_for_the_one_before_it() -> None:
    coordinator = SlowCoordinator()
    commits = OffsetCommits(coordinator, "test")
    await commits.commit(fetched(FIRST, 1))
    await asyncio.sleep(0)

    second = asyncio.create_task(commits.commit(fetched(FIRST, 2)))
    await asyncio.sleep(0.01)
    assert not second.done()  # the first is still in flight: no second commit overtakes it
    assert coordinator.started == [{FIRST: 2}]

    coordinator.release.set()
    await second
    await commits.drain()
    assert coordinator.done == [{FIRST: 2}, {FIRST: 3}]


async def test_an_empty_fetch_commits_nothing() -> None:
    coordinator = SlowCoordinator()
    commits = OffsetCommits(coordinator, "test")
    await commits.commit({})
    await commits.drain()
    assert coordinator.started == []


async def test_a_failed_commit_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    coordinator = SlowCoordinator()
    coordinator.fail_with = CommitFailedError("the group rebalanced")
    coordinator.release.set()
    commits = OffsetCommits(coordinator, "courrier")

    with caplog.at_level(logging.WARNING, logger="kernel.kafka"):
        await commits.commit(fetched(FIRST, 5))
        await commits.commit(fetched(FIRST, 6))  # drains the failed one first: no raise
        await commits.drain()

    assert coordinator.started == [{FIRST: 6}, {FIRST: 7}]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert all(
        w.startswith("courrier could not commit its offsets (their records will come again)")
        and "CommitFailedError" in w
        for w in warnings
    )


def lag(topic: str) -> float | None:
    return REGISTRY.get_sample_value(
        "hub_consumer_lag_events", {"component": "lagging", "topic": topic}
    )


async def test_the_lag_is_what_the_broker_holds_beyond_the_records_handled() -> None:
    coordinator = SlowCoordinator()
    coordinator.release.set()
    commits = OffsetCommits(coordinator, "lagging")

    coordinator.highwaters = {FIRST: 500, SECOND: 40}
    await commits.commit({**fetched(FIRST, 98, 99), **fetched(SECOND, 39)})
    assert lag("courrier.events") == 400  # 100..499 on the first partition, none on the second

    coordinator.highwaters = {FIRST: 500, SECOND: 45}
    await commits.commit(fetched(FIRST, *range(100, 500)))
    assert lag("courrier.events") == 0  # the second's 5 new records: known at its next batch

    await commits.commit(fetched(SECOND, 40, 41))
    assert lag("courrier.events") == 3

    coordinator.assigned = {FIRST}  # a rebalance gave the second partition to another member
    await commits.commit(fetched(FIRST, 500))
    assert lag("courrier.events") == 0
    await commits.drain()


async def test_a_partition_revoked_while_its_records_were_handled_is_left_to_its_new_owner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    coordinator = SlowCoordinator()
    coordinator.release.set()
    commits = OffsetCommits(coordinator, "test")
    coordinator.assigned = {SECOND}  # the first went to another member during the batch

    with caplog.at_level(logging.WARNING, logger="kernel.kafka"):
        await commits.commit({**fetched(FIRST, 5), **fetched(SECOND, 3)})
        await commits.drain()

    # The second's offset is committed; the first's records come again to their new owner.
    assert coordinator.done == [{SECOND: 4}]
    assert caplog.records == []


async def test_a_stopping_consumer_waits_for_its_last_commit_only_so_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    coordinator = SlowCoordinator()  # the broker is away: the commit never ends
    commits = OffsetCommits(coordinator, "test")
    await commits.commit(fetched(FIRST, 1))

    with caplog.at_level(logging.WARNING, logger="kernel.kafka"):
        await asyncio.wait_for(commits.drain(timeout=0.05), timeout=5)

    assert coordinator.done == []
    assert "TimeoutError" in caplog.records[0].getMessage()
