"""The meeting process: its database, REST API, WS4PM facade, OParl publication, outbox
relay and event consumer."""

from __future__ import annotations

from fastapi import FastAPI

from kernel.consumer import EventHandler, merge_handlers
from kernel.service import Service, ServiceOptions, build_service_app
from kernel.settings import HubSettings, get_settings
from services.meeting.api import router
from services.meeting.configuration import load_meeting_settings
from services.meeting.domain import MAX_ITEM_REQUEST_BYTES
from services.meeting.notifications import COURRIER_TOPIC
from services.meeting.notifications import HANDLERS as NOTIFICATION_HANDLERS
from services.meeting.oparl import RenderedPageFront, oparl_router
from services.meeting.oversight import HANDLERS as OVERSIGHT_HANDLERS
from services.meeting.oversight import TOPICS as OVERSIGHT_TOPICS
from services.meeting.tables import MIGRATIONS
from services.meeting.urban_requests import URBAN_TOPIC, urban_handlers
from services.meeting.ws4pm import ws4pm_router

COMPONENT = "meeting"
#: What the meeting service consumes: decision requests, and its decisions' oversight news
#: and notifications (the mail courrier sends about them).
TOPICS = (URBAN_TOPIC, *OVERSIGHT_TOPICS, COURRIER_TOPIC)

MeetingOptions = ServiceOptions


def configure(app: FastAPI) -> None:
    app.state.meeting_settings = load_meeting_settings(app.state.tenants)


def handlers(app: FastAPI) -> dict[str, EventHandler]:
    return merge_handlers(
        urban_handlers(app.state.meeting_settings), OVERSIGHT_HANDLERS, NOTIFICATION_HANDLERS
    )


def build_app(
    settings: HubSettings | None = None, options: ServiceOptions | None = None
) -> FastAPI:
    settings = settings or get_settings()
    service = Service(
        component=COMPONENT,
        title="College and council meetings (meeting)",
        description="Agenda items, meetings and decisions of the communes' college and council, "
        "with gap-free decision numbers; events on meeting.events; a WS4PM-compatible SOAP "
        "facade at /ws4pm for existing clients; decisions published as OParl 1.1.",
        migrations=MIGRATIONS,
        topics=TOPICS,
        handlers=handlers,
        routers=[router(), ws4pm_router(settings), oparl_router()],
        configure=configure,
        front=RenderedPageFront,
        body_bytes=MAX_ITEM_REQUEST_BYTES,
    )
    return build_service_app(service, settings, options or ServiceOptions())
