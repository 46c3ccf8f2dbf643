"""The gateway process: wiring of routing, connectors, delivery engine, relay and API."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import httpx
from fastapi import FastAPI

from gateway.api import dashboard_router, router
from gateway.connectors.base import (
    Connector,
    ConnectorContext,
    connector_types,
    load_plugin_connectors,
)
from gateway.deliveries import MIGRATIONS
from gateway.engine import DeliveryEngine
from gateway.routing import RoutingTable, load_routing
from kernel.app import BackgroundTask, create_app
from kernel.database import create_engine, session_factory
from kernel.kafka import make_producer
from kernel.migrations import migrate
from kernel.outbox import OutboxRelay
from kernel.settings import HubSettings, get_settings
from kernel.tenants import load_tenants

#: The hub's own connectors; importing each registers its type.
BUILT_IN_CONNECTORS = ("gateway.connectors.ebox_rest", "gateway.connectors.ebox_soap")


def register_built_in_connectors() -> None:
    for module in BUILT_IN_CONNECTORS:
        importlib.import_module(module)
    load_plugin_connectors()


def build_connectors(
    routing: RoutingTable, settings: HubSettings, http: httpx.AsyncClient
) -> dict[tuple[str, str], Connector]:
    factories = connector_types()
    return {
        (tenant, name): factories[config["type"]](ConnectorContext(tenant, settings, http), config)
        for (tenant, name), config in routing.connector_settings.items()
    }


@dataclass
class GatewayOptions:
    """What tests and benchmarks may override; by default everything comes from settings."""

    database_url: str | None = None
    #: PostgreSQL schema; None means ``settings.database_schema_for("gateway")``.
    database_schema: str | None = None
    kafka_bootstrap_servers: str | None = None
    group_id: str = "gateway"
    #: Deliveries in flight at once; each holds one pooled HTTP connection.
    concurrency: int = 8


def build_app(
    settings: HubSettings | None = None, options: GatewayOptions | None = None
) -> FastAPI:
    settings = settings or get_settings()
    options = options or GatewayOptions()
    register_built_in_connectors()
    # Validate every tenant file now: a wrong routing table stops the start with its reasons.
    routing = load_routing(load_tenants(settings.tenants_dir), set(connector_types()))

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        schema = options.database_schema or settings.database_schema_for("gateway")
        engine = create_engine(
            options.database_url or settings.database_url_for("gateway"), schema=schema
        )
        await migrate(engine, "gateway", MIGRATIONS, schema=schema)
        sessions = session_factory(engine)
        http = httpx.AsyncClient(limits=httpx.Limits(max_connections=options.concurrency * 2))
        connectors = build_connectors(routing, settings, http)
        bootstrap = options.kafka_bootstrap_servers or settings.kafka_bootstrap_servers
        if not bootstrap:
            raise RuntimeError(
                "KAFKA_BOOTSTRAP_SERVERS is not set (hub up sets it for the embedded broker)"
            )
        producer = make_producer(bootstrap, client_id="gateway")
        await producer.start()
        relay = OutboxRelay(sessions, producer, component="gateway")
        delivery_engine = DeliveryEngine(
            sessions=sessions,
            routing=routing,
            connectors=connectors,
            relay=relay,
            concurrency=options.concurrency,
        )
        app.state.db_engine, app.state.sessions, app.state.engine = (
            engine,
            sessions,
            delivery_engine,
        )
        app.state.resources = (producer, http, connectors)

        async def relay_receipts() -> None:
            await relay.run()

        async def consume_events() -> None:
            await delivery_engine.run_consumer(bootstrap, options.group_id)

        async def retry_deliveries() -> None:
            await delivery_engine.run_retries()

        return [relay_receipts, consume_events, retry_deliveries]

    async def shutdown(app: FastAPI) -> None:
        producer, http, connectors = app.state.resources
        for connector in connectors.values():
            await connector.aclose()
        await producer.stop()
        await http.aclose()
        await app.state.db_engine.dispose()

    app = create_app(
        "gateway",
        settings,
        title="Interop gateway",
        description="Delivers the hub's document events to external services and reports outcomes.",
        startup=startup,
        shutdown=shutdown,
    )
    app.include_router(router())
    app.include_router(dashboard_router())
    return app
