"""Prometheus metrics shared by every process, served on ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PUBLISHED = Counter(
    "hub_events_published_total",
    "Events published to Kafka by the outbox relay",
    ["component", "topic"],
)
EVENTS_CONSUMED = Counter(
    "hub_events_consumed_total", "Events consumed from Kafka", ["component", "topic", "outcome"]
)
DELIVERIES = Counter(
    "hub_deliveries_total",
    "Delivery attempts by connector and outcome",
    ["connector", "outcome"],
)
DELIVERY_LATENCY = Histogram(
    "hub_delivery_latency_seconds",
    "From the event's time to its final delivery outcome",
    ["connector"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
HTTP_REQUESTS = Counter(
    "hub_http_requests_total", "API requests", ["component", "method", "status"]
)
BACKGROUND_JOB_RESTARTS = Counter(
    "hub_background_job_restarts_total",
    "Background jobs (consumers, relays, pollers) restarted after they stopped on an error",
    ["component", "job"],
)
OUTBOX_PENDING = Gauge(
    "hub_outbox_pending_events",
    "Events committed but not yet published to Kafka (read at each scrape)",
    ["component"],
)
OUTBOX_OLDEST_PENDING_AGE = Gauge(
    "hub_outbox_oldest_pending_seconds",
    "How long the oldest event not yet published has waited (0: none waits; read at each scrape)",
    ["component"],
)
OUTBOX_HELD_BACK = Counter(
    "hub_outbox_held_back_total",
    "Events the outbox relay could not publish for a reason of their own, their key then held "
    "back and tried again less and less often (reason: refused, the cluster refuses the "
    "record for good, e.g. over its max.message.bytes; topic-missing, the cluster lacks the "
    "topic); once per attempt",
    ["component", "topic", "reason"],
)
CONSUMER_LAG = Gauge(
    "hub_consumer_lag_events",
    "Records of the topic on the broker that this process has not handled yet (after its "
    "last batch, over its partitions)",
    ["component", "topic"],
)
CERTIFICATE_EXPIRY = Gauge(
    "hub_certificate_expiry_timestamp_seconds",
    "When a tenant's certificate (WS-Security signature, TLS client) stops being valid, in "
    "Unix time; read when the gateway builds the connector that uses it (connector: its "
    "type; name: its name in the tenant's file)",
    ["tenant", "connector", "name"],
)
INBOUND_POLL_FAILURES = Counter(
    "hub_inbound_poll_failures_total",
    "Polls of an outside source by the gateway's inbound adapters that failed as a whole "
    "(the source away or answering what its contract does not allow, the database away): "
    "nothing more of that source was taken until the next poll; a stuck source's counter "
    "grows at every poll while /healthz stays green (channel: peppol, notice, oversight, "
    "opinion; source: the access point's URL, the NOTICe instance, the tenant)",
    ["channel", "source"],
)
INBOUND_LAST_SUCCESS = Gauge(
    "hub_inbound_last_success_timestamp_seconds",
    "When a poll of an outside source by the gateway's inbound adapters last completed "
    "without failing as a whole, in Unix time (labels as hub_inbound_poll_failures_total); "
    "alert on time() - hub_inbound_last_success_timestamp_seconds > 900 (no poll that "
    "worked for 15 minutes, at the default poll intervals; a few intervals of a channel "
    "polled less often). Not kept across restarts: absent until the source's first "
    "poll that works after the gateway starts",
    ["channel", "source"],
)
INBOUND_CONSECUTIVE_FAILURES = Gauge(
    "hub_inbound_consecutive_poll_failures",
    "Polls of an outside source in a row that failed as a whole, 0 once one works (labels "
    "as hub_inbound_poll_failures_total); set from the first poll after the gateway "
    "starts, so it also catches a source that has failed ever since: alert on > 0 for 15 "
    "minutes",
    ["channel", "source"],
)
