"""At start, the hub checks the ``max.message.bytes`` of topics that exist already (made
by hand, by an older version, by a broker's auto-create), against the real broker."""

from __future__ import annotations

import logging
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError

from kernel.kafka import (
    MAX_REQUEST_BYTES,
    NEEDED_MAX_MESSAGE_BYTES,
    TOPIC_MAX_MESSAGE_BYTES,
    TopicTooSmall,
    ensure_topics,
)

pytestmark = pytest.mark.integration
#: Kafka's default ``max.message.bytes``, what an auto-created topic gets.
KAFKA_DEFAULT = 1048588


async def _create(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    """Create ``topic`` as someone else than the hub would: with ``configs`` only."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=configs)])
    finally:
        await admin.close()


async def topic_limit(bootstrap: str, topic: str) -> int:
    """The ``max.message.bytes`` the broker reports for ``topic``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
    finally:
        await admin.close()
    [resource] = described.resources
    return int({entry[0]: entry[1] for entry in resource[4]}["max.message.bytes"])


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "kernel.kafka" and record.levelno == level
    ]


async def test_an_existing_topic_under_the_hubs_limit_is_told_at_start_with_the_fix(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"limits-{uuid.uuid4().hex[:8]}"
    await _create(kafka_bootstrap, topic, {"max.message.bytes": str(KAFKA_DEFAULT)})
    caplog.set_level(logging.INFO, logger="kernel.kafka")

    assert await ensure_topics(kafka_bootstrap, {topic: 1}) == [TopicTooSmall(topic, KAFKA_DEFAULT)]

    [warning] = _records(caplog, logging.WARNING)
    assert f"topic {topic} takes records of at most {KAFKA_DEFAULT} bytes" in warning
    assert f"up to {NEEDED_MAX_MESSAGE_BYTES} bytes" in warning
    assert "hub_outbox_held_back_total" in warning
    assert warning.endswith(
        f"kafka-configs.sh --bootstrap-server {kafka_bootstrap} --alter --entity-type topics"
        f" --entity-name {topic} --add-config max.message.bytes={TOPIC_MAX_MESSAGE_BYTES}"
    )
    # Told, not repaired: the hub leaves a topic it did not make as it is.
    assert await topic_limit(kafka_bootstrap, topic) == KAFKA_DEFAULT


async def test_topics_with_room_for_the_largest_event_are_not_warned_about(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    made_by_the_hub = f"limits-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {made_by_the_hub: 1})
    # Set on purpose to exactly what the largest event's batch takes: enough.
    just_enough = f"limits-{uuid.uuid4().hex[:8]}"
    await _create(kafka_bootstrap, just_enough, {"max.message.bytes": str(MAX_REQUEST_BYTES)})
    caplog.set_level(logging.INFO, logger="kernel.kafka")

    checked = await ensure_topics(kafka_bootstrap, {made_by_the_hub: 1, just_enough: 1})

    assert checked == []
    assert _records(caplog, logging.WARNING) == []
    assert _records(caplog, logging.INFO) == []  # both were checked, not skipped


async def test_a_limit_the_broker_does_not_report_is_logged_at_info_and_the_start_goes_on(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A topic created without the config: Tansu reports no max.message.bytes for it
    # (a Kafka cluster reports its default, and the test then sees the warning).
    topic = f"limits-{uuid.uuid4().hex[:8]}"
    await _create(kafka_bootstrap, topic, {})
    caplog.set_level(logging.INFO, logger="kernel.kafka")

    too_small = await ensure_topics(kafka_bootstrap, {topic: 1})

    if too_small:  # a Kafka cluster (KAFKA_BOOTSTRAP_SERVERS): its default, about 1 MiB
        assert too_small[0].topic == topic
        assert too_small[0].max_message_bytes < NEEDED_MAX_MESSAGE_BYTES
        assert len(_records(caplog, logging.WARNING)) == 1
    else:
        assert _records(caplog, logging.WARNING) == []
        assert _records(caplog, logging.INFO) == [
            f"could not check the max.message.bytes of topic {topic}: the broker does not report it"
        ]


async def test_a_broker_that_cannot_describe_configs_does_not_stop_the_start(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(*_args: object, **_kwargs: object) -> None:
        # What Tansu does to a DescribeConfigs that names its configs: it hangs up.
        raise KafkaConnectionError("Connection at 127.0.0.1:9092 closed")

    topic = f"limits-{uuid.uuid4().hex[:8]}"
    await _create(kafka_bootstrap, topic, {"max.message.bytes": str(KAFKA_DEFAULT)})
    monkeypatch.setattr(AIOKafkaAdminClient, "describe_configs", refuse)
    caplog.set_level(logging.INFO, logger="kernel.kafka")

    assert await ensure_topics(kafka_bootstrap, {topic: 1}) == []

    [info] = _records(caplog, logging.INFO)
    assert info.startswith(f"could not check the max.message.bytes of the topics {topic} (")
    assert "KafkaConnectionError" in info
    assert _records(caplog, logging.WARNING) == []
    monkeypatch.undo()
    assert await topic_limit(kafka_bootstrap, topic) == KAFKA_DEFAULT


async def test_topics_the_start_makes_itself_are_not_described_again(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Kafka cluster may not describe a topic it has just made yet: the check would
    # only be logged as impossible, for a topic that has the hub's limit anyway.
    asked: list[object] = []
    describe = AIOKafkaAdminClient.describe_configs

    async def recorded(self: AIOKafkaAdminClient, resources: list[ConfigResource]) -> object:
        asked.extend(resource.name for resource in resources)
        return await describe(self, resources)

    monkeypatch.setattr(AIOKafkaAdminClient, "describe_configs", recorded)
    existing, new = f"limits-{uuid.uuid4().hex[:8]}", f"limits-{uuid.uuid4().hex[:8]}"
    await _create(kafka_bootstrap, existing, {"max.message.bytes": str(KAFKA_DEFAULT)})
    caplog.set_level(logging.INFO, logger="kernel.kafka")

    assert await ensure_topics(kafka_bootstrap, {existing: 1, new: 1}) == [
        TopicTooSmall(existing, KAFKA_DEFAULT)
    ]
    assert asked == [existing]
    monkeypatch.undo()
    assert await topic_limit(kafka_bootstrap, new) == TOPIC_MAX_MESSAGE_BYTES
