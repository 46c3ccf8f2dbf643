"""FetchPacing on a real consumer of the embedded broker: the fetch requests on the wire
carry the wait it sets (the attribute it changes is aiokafka's own, not published)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from kernel.kafka import FetchPacing, ensure_topics, make_consumer, make_producer

pytestmark = pytest.mark.integration


async def test_the_fetches_on_the_wire_wait_long_once_idle_and_short_after_a_record(
    kafka_bootstrap: str,
) -> None:
    topic = f"test.pacing.{uuid.uuid4().hex[:6]}"
    await ensure_topics(kafka_bootstrap, {topic: 2})
    consumer = make_consumer(
        kafka_bootstrap, f"pacing-{uuid.uuid4().hex[:6]}", [topic], "pacing", fetch_max_wait_ms=20
    )
    producer = make_producer(kafka_bootstrap, "pacing")
    await consumer.start()
    await producer.start()
    waits: list[int] = []
    send = consumer._client.send

    async def spy(node_id: int, request: Any, **kwargs: Any) -> Any:
        if type(request).__name__ == "FetchRequest":
            waits.append(request._max_wait_ms)
        return await send(node_id, request, **kwargs)

    consumer._client.send = spy  # type: ignore[method-assign]
    pacing = FetchPacing(consumer, 20, idle_wait_ms=300, idle_after=0.8)
    try:

        async def read_for(seconds: float) -> int:
            got = 0
            deadline = asyncio.get_running_loop().time() + seconds
            while asyncio.get_running_loop().time() < deadline:
                batches = await consumer.getmany(timeout_ms=50)
                pacing.note(bool(batches))
                got += sum(len(records) for records in batches.values())
            return got

        assert await read_for(2.0) == 0
        assert waits[0] == 20 and waits[-1] == 300  # short at first, long once idle
        await producer.send_and_wait(topic, b"a record", key=b"k")
        waits.clear()
        assert await read_for(0.7) == 1  # within the 0.8 s that keep the consumer busy
        assert waits[-1] == 20  # the record brought the short wait back
    finally:
        await producer.stop()
        await consumer.stop()
