"""How the polls of each outside source went: for the operators (``GET
/v1/inbound/sources``, the dashboard) and for alerts (``kernel.metrics``'
``hub_inbound_*`` metrics, which this module alone sets).

A source is the failure counter's ``(channel, source)``: a Peppol access point account
(its URL, with a fingerprint of its key when accounts share the URL), a NOTICe
instance, a tenant's oversight or opinions account. Its poll fails as a whole when
nothing more of it could be taken until the next poll (the source away, the database
away); one item it could not give is that item's problem (``WaitingItems``), not the
source's.

One object per process, ``POLL_HEALTH``, shared by the four adapters as the process's
Prometheus metrics are, and kept in memory only: a restarted gateway starts empty, with
its gauges unset, so an absent ``hub_inbound_last_success_timestamp_seconds`` means "no
poll of that source has worked since the gateway started".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from kernel.metrics import INBOUND_CONSECUTIVE_FAILURES, INBOUND_LAST_SUCCESS, INBOUND_POLL_FAILURES


@dataclass
class SourceHealth:
    channel: str
    source: str
    #: Whose source it is: the tenant of an oversight or opinions account, the tenant
    #: whose file names the NOTICe instance. None for one that is no single tenant's (a
    #: Peppol access point account, which tenants may share and whose listings carry
    #: documents for no tenant; a NOTICe instance no tenant names), shown only to the
    #: hub's operators, as the inbound documents of no tenant are.
    tenant: str | None
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    consecutive_failures: int = 0
    #: The kind of the last failure (its exception's class), never its text, which may
    #: quote an internal address or a credential in a URL: the log has it.
    last_error: str | None = None


class PollHealth:
    def __init__(self) -> None:
        self._sources: dict[tuple[str, str], SourceHealth] = {}

    def succeeded(self, channel: str, source: str, tenant: str | None, at: datetime) -> None:
        """A poll of the source completed (whatever it took); ``at``: the adapter's clock."""
        health = self._of(channel, source, tenant)
        health.last_success_at, health.consecutive_failures = at, 0
        INBOUND_LAST_SUCCESS.labels(channel, source).set(at.timestamp())
        INBOUND_CONSECUTIVE_FAILURES.labels(channel, source).set(0)

    def failed(
        self, channel: str, source: str, tenant: str | None, at: datetime, error: BaseException
    ) -> None:
        """A poll of the source failed as a whole; ``at``: the adapter's clock."""
        health = self._of(channel, source, tenant)
        health.last_failure_at, health.last_error = at, type(error).__name__
        health.consecutive_failures += 1
        INBOUND_POLL_FAILURES.labels(channel, source).inc()
        INBOUND_CONSECUTIVE_FAILURES.labels(channel, source).set(health.consecutive_failures)

    def sources(self) -> list[SourceHealth]:
        """Every source polled since the process started (copies), by channel and source."""
        return [replace(health) for _, health in sorted(self._sources.items())]

    def _of(self, channel: str, source: str, tenant: str | None) -> SourceHealth:
        health = self._sources.setdefault((channel, source), SourceHealth(channel, source, tenant))
        health.tenant = tenant
        return health


POLL_HEALTH = PollHealth()
