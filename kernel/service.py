"""How a business service's process is put together: the same way for every service.

A service describes itself (``Service``): its name and API texts, its
migrations, the topics it consumes, and what it builds once its tenants are
loaded (its settings, its event handlers, extra background jobs).
``build_service_app`` does the rest identically for all of them: tenants,
database and migrations, the outbox relay, the event consumer (inbox, kept
rejected events), the routers and the operators' ``/v1/rejected-events``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp

from kernel.api import rejected_events_router
from kernel.app import (
    BackgroundTask,
    broker_check,
    check_health_of,
    create_app,
    database_check,
    refresh_at_scrape,
)
from kernel.consumer import EventConsumer, EventHandler
from kernel.database import create_engine, session_factory
from kernel.idempotency import IdempotencyMiddleware, document_in_openapi
from kernel.kafka import make_producer
from kernel.migrations import Migration, migrate
from kernel.outbox import OutboxRelay
from kernel.settings import HubSettings
from kernel.tenants import load_tenants


@dataclass
class ServiceOptions:
    """What tests and benchmarks may override; by default everything comes from settings."""

    database_url: str | None = None
    #: PostgreSQL schema; None means ``settings.database_schema_for(<component>)``.
    database_schema: str | None = None
    kafka_bootstrap_servers: str | None = None
    #: Consumer group; None means the component's name.
    group_id: str | None = None
    #: False: the APIs alone, events wait in the outbox (tests of the APIs without a broker).
    background: bool = True
    #: The topics to consume; None means the service's. A test of one flow narrows them so
    #: that the session's other tests' events (a fresh group reads all) stay out of it.
    topics: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Running:
    """What a service's jobs work with once the process is up."""

    app: FastAPI
    sessions: async_sessionmaker[AsyncSession]
    relay: OutboxRelay


def _no_jobs(running: Running) -> list[BackgroundTask]:
    return []


def _nothing_to_configure(app: FastAPI) -> None:
    return None


@dataclass(frozen=True)
class Service:
    component: str
    title: str
    description: str
    migrations: Sequence[Migration]
    #: The topics the consumer follows.
    topics: Sequence[str]
    #: The event handlers, by event type, built after ``configure``.
    handlers: Callable[[FastAPI], dict[str, EventHandler]]
    #: The service's routers (its ``/v1`` API first).
    routers: Sequence[APIRouter]
    #: Reads the service's tenant settings into ``app.state`` (``app.state.tenants`` is
    #: loaded); a wrong tenant file fails here, at start, not at the first event.
    configure: Callable[[FastAPI], None] = _nothing_to_configure
    #: Background jobs besides the relay and the consumer (e.g. a deadline watcher).
    jobs: Callable[[Running], list[BackgroundTask]] = _no_jobs
    consumer: type[EventConsumer] = EventConsumer
    #: Scope that reads the service (and its kept rejected events).
    read_scope: str = field(default="")
    #: Scope that writes to the service (and replays its kept events).
    write_scope: str = field(default="")
    #: A fast path in front of the routes (``kernel.app.create_app``'s ``front``).
    front: Callable[[ASGIApp], ASGIApp] | None = None
    #: The largest request body the service's own API needs, when more than the hub's
    #: ``max_body_bytes`` (``kernel.app.create_app``'s ``body_bytes``).
    body_bytes: int = 0


def build_service_app(service: Service, settings: HubSettings, options: ServiceOptions) -> FastAPI:
    component = service.component

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        app.state.tenants = load_tenants(settings.tenants_dir)
        service.configure(app)
        schema = options.database_schema or settings.database_schema_for(component)
        engine = create_engine(
            options.database_url or settings.database_url_for(component), schema=schema
        )
        app.state.db_engine = engine
        app.state.producer = app.state.relay = None
        await migrate(engine, component, service.migrations, schema=schema)
        sessions = session_factory(engine)
        app.state.sessions = sessions
        check_health_of(app, "database", database_check(sessions))
        # Replays kept events (kernel.api); replaced below by the running one, which wakes
        # the relay.
        app.state.consumer = service.consumer(
            component=component, sessions=sessions, handlers=service.handlers(app)
        )
        if not options.background:
            return []
        bootstrap = options.kafka_bootstrap_servers or settings.kafka_bootstrap_servers
        if not bootstrap:
            raise RuntimeError(
                "KAFKA_BOOTSTRAP_SERVERS is not set (hub up sets it for the embedded broker)"
            )
        check_health_of(app, "broker", broker_check(bootstrap))
        producer = make_producer(bootstrap, client_id=component)
        await producer.start()
        app.state.producer = producer
        relay = OutboxRelay(
            sessions,
            producer,
            component=component,
            forgetful_broker_since=settings.embedded_broker_started_at,
        )
        app.state.relay = relay
        refresh_at_scrape(app, relay.report_backlog)
        consumer = service.consumer(
            component=component, sessions=sessions, handlers=service.handlers(app), relay=relay
        )
        app.state.consumer = consumer

        async def relay_outbox() -> None:
            await relay.run()

        async def consume_events() -> None:
            topics = options.topics or service.topics
            await consumer.run(
                bootstrap,
                options.group_id or component,
                topics,
                fetch_wait_ms=settings.kafka_fetch_wait_ms,
            )

        return [relay_outbox, consume_events, *service.jobs(Running(app, sessions, relay))]

    async def shutdown(app: FastAPI) -> None:
        if app.state.producer is not None:
            await app.state.producer.stop()
        await app.state.db_engine.dispose()

    app = create_app(
        component,
        settings,
        title=service.title,
        description=service.description,
        startup=startup,
        shutdown=shutdown,
        front=_idempotent(service.front),
        body_bytes=service.body_bytes,
    )
    for router in service.routers:
        app.include_router(router)
    app.include_router(
        rejected_events_router(
            service.read_scope or f"{component}:read", service.write_scope or f"{component}:write"
        )
    )
    document_in_openapi(app)
    return app


def _idempotent(front: Callable[[ASGIApp], ASGIApp] | None) -> Callable[[ASGIApp], ASGIApp]:
    """``front`` (if any) behind the Idempotency-Key check (``kernel.idempotency``)."""

    def wrap(app: ASGIApp) -> ASGIApp:
        return IdempotencyMiddleware(front(app) if front is not None else app)

    return wrap
