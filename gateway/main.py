"""The gateway process: wiring of routing, connectors, delivery engine, relay and API."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.api import certificates_router, dashboard_router, inbound_router, router
from gateway.connectors.base import (
    Connector,
    ConnectorContext,
    connector_types,
    load_plugin_connectors,
)
from gateway.connectors.oversight_soap import OversightSoapConnector
from gateway.connectors.peppol_ap import PeppolApSettings
from gateway.deliveries import MIGRATIONS
from gateway.engine import DeliveryEngine
from gateway.http import outbound_client
from gateway.inbound.notice import build_notice_inbound
from gateway.inbound.opinions import build_opinion_inbound
from gateway.inbound.oversight import OversightInbound
from gateway.inbound.peppol import PeppolInbound, inboxes_from
from gateway.routing import RoutingConfigError, RoutingTable, load_routing
from kernel.api import rejected_events_router
from kernel.app import (
    BackgroundTask,
    broker_check,
    check_health_of,
    create_app,
    database_check,
    refresh_at_scrape,
)
from kernel.database import create_engine, session_factory
from kernel.kafka import make_producer
from kernel.migrations import migrate
from kernel.outbox import OutboxRelay
from kernel.settings import HubSettings, get_settings
from kernel.tenants import load_tenants

#: The hub's own connectors; importing each registers its type.
BUILT_IN_CONNECTORS = (
    "gateway.connectors.ebox_rest",
    "gateway.connectors.ebox_soap",
    "gateway.connectors.peppol_ap",
    "gateway.connectors.inforius",
    "gateway.connectors.stesud",
    "gateway.connectors.oversight_soap",
    "gateway.connectors.notice",
    "gateway.connectors.ksz_bcss",
    "gateway.connectors.opinions",
)


def register_built_in_connectors() -> None:
    for module in BUILT_IN_CONNECTORS:
        importlib.import_module(module)
    load_plugin_connectors()


def build_connectors(
    routing: RoutingTable, settings: HubSettings, http: httpx.AsyncClient
) -> dict[tuple[str, str], Connector]:
    """Every tenant's connectors; a RoutingConfigError naming every one whose settings are
    wrong (not the first only: an operator fixes a tenant file in one go)."""
    factories = connector_types()
    built: dict[tuple[str, str], Connector] = {}
    problems: list[str] = []
    for (tenant, name), config in routing.connector_settings.items():
        try:
            built[(tenant, name)] = factories[config["type"]](
                ConnectorContext(tenant, settings, http, name), config
            )
        except (ValueError, OSError) as exc:
            problems.append(f"connectors.{name}: {exc}")
        except Exception as exc:
            # Anything else a factory raises also comes from this connector's settings or
            # files: an encrypted key (TypeError), a broken WSDL (zeep), a key xmlsec
            # refuses. Listed with the others rather than stopping the start with a bare
            # traceback that names neither the tenant nor the connector.
            problems.append(f"connectors.{name}: tenant {tenant}: {type(exc).__name__}: {exc}")
    if problems:
        raise RoutingConfigError(
            "the tenants' connectors have problems:\n  - " + "\n  - ".join(problems)
        )
    return built


def build_peppol_inbound(
    routing: RoutingTable,
    sessions: async_sessionmaker[AsyncSession],
    http: httpx.AsyncClient,
    relay: OutboxRelay | None,
) -> PeppolInbound:
    accounts = [
        PeppolApSettings.model_validate(routing.connector_settings[(tenant, name)])
        for tenant, name in routing.peppol_inboxes.items()
    ]
    return PeppolInbound(
        sessions=sessions,
        inboxes=inboxes_from(accounts, http),
        participants=routing.participants,
        relay=relay,
    )


@dataclass
class GatewayOptions:
    """What tests and benchmarks may override; by default everything comes from settings."""

    database_url: str | None = None
    #: PostgreSQL schema; None means ``settings.database_schema_for("gateway")``.
    database_schema: str | None = None
    kafka_bootstrap_servers: str | None = None
    group_id: str = "gateway"
    #: Deliveries in flight at once on one target (a tenant's connector), each holding one
    #: pooled HTTP connection.
    concurrency: int = 8
    #: Pause between two polls of the Peppol access point inboxes; None: the settings'
    #: (``HubSettings.poll_seconds``).
    peppol_poll_seconds: float | None = None
    #: Pause between two polls of the regional oversight's outcomes; None: the settings'.
    oversight_poll_seconds: float | None = None
    #: Pause between two polls of NOTICe and of the opinions platform; None: the settings'.
    notice_poll_seconds: float | None = None
    opinion_poll_seconds: float | None = None


def build_app(
    settings: HubSettings | None = None, options: GatewayOptions | None = None
) -> FastAPI:
    settings = settings or get_settings()
    options = options or GatewayOptions()
    register_built_in_connectors()
    # Validate every tenant file now: a wrong routing table stops the start with its reasons.
    tenants = load_tenants(settings.tenants_dir)
    routing = load_routing(tenants, set(connector_types()))

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        schema = options.database_schema or settings.database_schema_for("gateway")
        engine = create_engine(
            options.database_url or settings.database_url_for("gateway"), schema=schema
        )
        await migrate(engine, "gateway", MIGRATIONS, schema=schema)
        sessions = session_factory(engine)
        # Each target has its own slots; one host (the e-Box, which every tenant's target
        # reaches) gets no more connections than two targets' worth, and all together a
        # bounded number, whatever the number of targets held by a slow one.
        http = outbound_client(max_connections=256, per_host=options.concurrency * 2)
        connectors = build_connectors(routing, settings, http)
        bootstrap = options.kafka_bootstrap_servers or settings.kafka_bootstrap_servers
        if not bootstrap:
            raise RuntimeError(
                "KAFKA_BOOTSTRAP_SERVERS is not set (hub up sets it for the embedded broker)"
            )
        check_health_of(app, "database", database_check(sessions))
        check_health_of(app, "broker", broker_check(bootstrap))
        producer = make_producer(bootstrap, client_id="gateway")
        await producer.start()
        relay = OutboxRelay(
            sessions,
            producer,
            component="gateway",
            forgetful_broker_since=settings.embedded_broker_started_at,
        )
        refresh_at_scrape(app, relay.report_backlog)
        delivery_engine = DeliveryEngine(
            sessions=sessions,
            routing=routing,
            connectors=connectors,
            relay=relay,
            concurrency=options.concurrency,
        )
        check_health_of(app, "deliveries", delivery_engine.check_recording)
        peppol_inbound = build_peppol_inbound(routing, sessions, http, relay)
        # Each tenant's oversight connector also reads the oversight's outcomes.
        oversight_inbound = OversightInbound(
            sessions=sessions,
            sources=[c for c in connectors.values() if isinstance(c, OversightSoapConnector)],
            relay=relay,
        )
        notice_inbound = build_notice_inbound(routing, tenants, sessions, http, relay)
        opinion_inbound = build_opinion_inbound(routing, sessions, http, relay)
        app.state.db_engine, app.state.sessions, app.state.engine = (
            engine,
            sessions,
            delivery_engine,
        )
        app.state.resources = (producer, http, connectors)
        # What ``kernel.api``'s rejected-events router reads: the kept records are replayed
        # through the deliveries, for the callers of configured tenants.
        app.state.consumer, app.state.relay, app.state.tenants = delivery_engine, relay, tenants

        async def relay_receipts() -> None:
            await relay.run()

        async def consume_events() -> None:
            await delivery_engine.run_consumer(
                bootstrap, options.group_id, fetch_wait_ms=settings.kafka_fetch_wait_ms
            )

        async def retry_deliveries() -> None:
            await delivery_engine.run_retries()

        async def poll_peppol_inboxes() -> None:
            await peppol_inbound.run(options.peppol_poll_seconds or settings.poll_seconds("peppol"))

        async def poll_oversight_outcomes() -> None:
            await oversight_inbound.run(
                options.oversight_poll_seconds or settings.poll_seconds("oversight")
            )

        async def poll_notice() -> None:
            await notice_inbound.run(options.notice_poll_seconds or settings.poll_seconds("notice"))

        async def poll_opinions() -> None:
            await opinion_inbound.run(
                options.opinion_poll_seconds or settings.poll_seconds("opinion")
            )

        return [
            relay_receipts,
            consume_events,
            retry_deliveries,
            poll_peppol_inboxes,
            poll_oversight_outcomes,
            poll_notice,
            poll_opinions,
        ]

    async def shutdown(app: FastAPI) -> None:
        producer, http, connectors = app.state.resources
        # The attempts handed over by a fetch and the retries under way: each is tried
        # again when its claim runs out.
        await app.state.engine.stop_background()
        for connector in connectors.values():
            await connector.aclose()
        await producer.stop()
        await http.aclose()
        await app.state.db_engine.dispose()

    app = create_app(
        "gateway",
        settings,
        title="Interop gateway",
        description=(
            "Delivers the hub's document events to external services and reports outcomes;"
            " fetches the communes' Peppol documents from their access point."
        ),
        startup=startup,
        shutdown=shutdown,
    )
    app.include_router(router())
    app.include_router(inbound_router())
    app.include_router(certificates_router())
    app.include_router(rejected_events_router("gateway:read", "gateway:operate"))
    app.include_router(dashboard_router())
    return app
