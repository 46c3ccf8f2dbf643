"""The courrier process: its database, API, outbox relay and event consumer, wired together.

The consumer follows ``gateway.receipts`` (the e-Box deliveries of outgoing
mail) and ``meeting.events`` (decisions to notify to the party they concern).
"""

from __future__ import annotations

from fastapi import FastAPI

from kernel.consumer import EventHandler, merge_handlers
from kernel.service import Service, ServiceOptions, build_service_app
from kernel.settings import HubSettings, get_settings
from services.courrier.api import router
from services.courrier.decisions import MEETING_TOPIC, decision_handlers
from services.courrier.receipts import HANDLERS, RECEIPTS_TOPIC
from services.courrier.tables import MIGRATIONS

COMPONENT = "courrier"
#: What courrier consumes: its mail's e-Box receipts, and decisions to notify.
TOPICS = (RECEIPTS_TOPIC, MEETING_TOPIC)

CourrierOptions = ServiceOptions


def handlers(app: FastAPI) -> dict[str, EventHandler]:
    return merge_handlers(HANDLERS, decision_handlers(app.state.tenants))


def build_app(
    settings: HubSettings | None = None, options: ServiceOptions | None = None
) -> FastAPI:
    service = Service(
        component=COMPONENT,
        title="Mail registry (courrier)",
        description="Registers incoming mail (typed in or scanned) with yearly numbers, and "
        "sends outgoing mail to the recipients' e-Box through the hub's gateway.",
        migrations=MIGRATIONS,
        topics=TOPICS,
        handlers=handlers,
        routers=[router()],
    )
    return build_service_app(service, settings or get_settings(), options or ServiceOptions())
