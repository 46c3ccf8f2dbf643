"""The urban process: its database, REST API, outbox relay, consumer and deadline watcher."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from kernel.app import BackgroundTask
from kernel.consumer import EventHandler
from kernel.service import Running, Service, ServiceOptions, build_service_app
from kernel.settings import HubSettings, get_settings
from services.urban.api import router
from services.urban.configuration import load_urban_settings
from services.urban.consumers import TOPICS, NoticeKeepingConsumer, handlers
from services.urban.tables import MIGRATIONS
from services.urban.watcher import DeadlineWatcher

COMPONENT = "urban"


@dataclass
class UrbanOptions(ServiceOptions):
    #: How often the deadline watcher looks for warnings due.
    watch_interval_seconds: float = 300.0


def configure(app: FastAPI) -> None:
    app.state.urban_settings = load_urban_settings(app.state.tenants)


def tenant_handlers(app: FastAPI) -> dict[str, EventHandler]:
    return handlers(app.state.urban_settings)


def build_app(settings: HubSettings | None = None, options: UrbanOptions | None = None) -> FastAPI:
    chosen = options or UrbanOptions()

    def watch_deadlines(running: Running) -> list[BackgroundTask]:
        watcher = DeadlineWatcher(
            running.sessions,
            running.relay,
            running.app.state.urban_settings,
            interval_seconds=chosen.watch_interval_seconds,
        )
        return [watcher.run]

    service = Service(
        component=COMPONENT,
        title="Urban-planning and environmental permits (urban)",
        description="Permit, certificate and declaration files under the Walloon CoDT and the "
        "environmental permit decree: NOTICe notifications, completeness, opinions, public "
        "inquiry, legal deadlines, college decisions; events on urban.events.",
        migrations=MIGRATIONS,
        topics=TOPICS,
        handlers=tenant_handlers,
        routers=[router()],
        configure=configure,
        jobs=watch_deadlines,
        consumer=NoticeKeepingConsumer,
    )
    return build_service_app(service, settings or get_settings(), chosen)
