"""The factures process: its database, API, outbox relay and event consumer, wired together."""

from __future__ import annotations

from fastapi import FastAPI

from kernel.consumer import EventHandler
from kernel.service import Service, ServiceOptions, build_service_app
from kernel.settings import HubSettings, get_settings
from services.factures.api import router
from services.factures.consumers import TOPICS, handlers
from services.factures.domain import approval_routing
from services.factures.tables import MIGRATIONS

COMPONENT = "factures"

FacturesOptions = ServiceOptions


def configure(app: FastAPI) -> None:
    for tenant in app.state.tenants.values():
        approval_routing(tenant)  # a wrong services.factures block fails the start, not an invoice


def tenant_handlers(app: FastAPI) -> dict[str, EventHandler]:
    return handlers(app.state.tenants)


def build_app(
    settings: HubSettings | None = None, options: ServiceOptions | None = None
) -> FastAPI:
    service = Service(
        component=COMPONENT,
        title="Invoices (factures)",
        description="Receives Peppol BIS Billing 3.0 invoices and credit notes (from the Peppol "
        "access point, uploads and scanned paper), checks them against EN 16931 and Peppol "
        "rules, routes them for approval, hands approved ones to the accounting software and "
        "answers the supplier with Peppol Invoice Responses.",
        migrations=MIGRATIONS,
        topics=TOPICS,
        handlers=tenant_handlers,
        routers=[router()],
        configure=configure,
    )
    return build_service_app(service, settings or get_settings(), options or ServiceOptions())
