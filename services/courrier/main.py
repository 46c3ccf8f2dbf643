"""The courrier process: its database, API, outbox relay and receipt consumer, wired together."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from kernel.app import BackgroundTask, create_app
from kernel.consumer import EventConsumer
from kernel.database import create_engine, session_factory
from kernel.kafka import make_producer
from kernel.migrations import migrate
from kernel.outbox import OutboxRelay
from kernel.settings import HubSettings, get_settings
from kernel.tenants import load_tenants
from services.courrier.api import router
from services.courrier.receipts import HANDLERS, RECEIPTS_TOPIC
from services.courrier.tables import MIGRATIONS

COMPONENT = "courrier"


@dataclass
class CourrierOptions:
    """What tests and benchmarks may override; by default everything comes from settings."""

    database_url: str | None = None
    #: PostgreSQL schema; None means ``settings.database_schema_for("courrier")``.
    database_schema: str | None = None
    kafka_bootstrap_servers: str | None = None
    group_id: str = COMPONENT
    #: False: the API alone, events wait in the outbox (tests of the API without a broker).
    background: bool = True


def build_app(
    settings: HubSettings | None = None, options: CourrierOptions | None = None
) -> FastAPI:
    settings = settings or get_settings()
    options = options or CourrierOptions()

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        app.state.tenants = load_tenants(settings.tenants_dir)
        schema = options.database_schema or settings.database_schema_for(COMPONENT)
        engine = create_engine(
            options.database_url or settings.database_url_for(COMPONENT), schema=schema
        )
        app.state.db_engine = engine
        app.state.producer = app.state.relay = None
        await migrate(engine, COMPONENT, MIGRATIONS, schema=schema)
        sessions = session_factory(engine)
        app.state.sessions = sessions
        if not options.background:
            return []
        bootstrap = options.kafka_bootstrap_servers or settings.kafka_bootstrap_servers
        if not bootstrap:
            raise RuntimeError(
                "KAFKA_BOOTSTRAP_SERVERS is not set (hub up sets it for the embedded broker)"
            )
        producer = make_producer(bootstrap, client_id=COMPONENT)
        await producer.start()
        app.state.producer = producer
        relay = OutboxRelay(sessions, producer, component=COMPONENT)
        app.state.relay = relay
        consumer = EventConsumer(
            component=COMPONENT, sessions=sessions, handlers=HANDLERS, relay=relay
        )

        async def relay_outbox() -> None:
            await relay.run()

        async def consume_receipts() -> None:
            await consumer.run(bootstrap, options.group_id, [RECEIPTS_TOPIC])

        return [relay_outbox, consume_receipts]

    async def shutdown(app: FastAPI) -> None:
        if app.state.producer is not None:
            await app.state.producer.stop()
        await app.state.db_engine.dispose()

    app = create_app(
        COMPONENT,
        settings,
        title="Mail registry (courrier)",
        description="Registers incoming mail (typed in or scanned) with yearly numbers, and "
        "sends outgoing mail to the recipients' e-Box through the hub's gateway.",
        startup=startup,
        shutdown=shutdown,
    )
    app.include_router(router())
    return app
