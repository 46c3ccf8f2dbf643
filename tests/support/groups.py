"""Consumer groups for tests that start at the end of the session's topics.

In production a new consumer group reads its topics from the beginning
(``auto_offset_reset="earliest"``) so that nothing published before it joined
is lost. In the test session every test publishes on the same broker, so a
new group would first work through every earlier test's events; on a loaded
machine that catch-up outlasts the tests' waits. A test's group therefore
gets committed offsets at the topics' current ends before its service starts:
it still sees everything the test publishes afterwards, and nothing older.
"""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from kernel.kafka import TOPICS


async def group_at_end(bootstrap: str, prefix: str) -> str:
    """A new group id whose offsets on every hub topic are committed at the current ends."""
    group_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster's metadata
        partitions = [
            TopicPartition(topic, number)
            for topic in TOPICS
            for number in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in ends.items()})
    finally:
        await consumer.stop()
    return group_id
