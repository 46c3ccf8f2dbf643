"""The processes of the hub, in start order, and how each is built."""

from __future__ import annotations

from dataclasses import dataclass

from kernel.settings import DEFAULT_PORTS


@dataclass(frozen=True)
class Component:
    name: str
    factory: str  # "module:function" returning the process's ASGI app
    port: int
    summary: str


COMPONENTS: tuple[Component, ...] = (
    Component(
        "sandbox",
        "sandbox.app:build_app",
        DEFAULT_PORTS["sandbox"],
        "the outside, simulated: e-Box REST and SOAP, Peppol access point, Stésud, Inforius,"
        " NOTICe, KSZ-BCSS, the oversight, opinions",
    ),
    Component(
        "courrier",
        "services.courrier.main:build_app",
        DEFAULT_PORTS["courrier"],
        "mail registry API",
    ),
    Component(
        "factures",
        "services.factures.main:build_app",
        DEFAULT_PORTS["factures"],
        "invoice reception, approval and supplier answers (Peppol BIS 3.0)",
    ),
    Component(
        "meeting",
        "services.meeting.main:build_app",
        DEFAULT_PORTS["meeting"],
        "college and council meetings, decisions, WS4PM facade",
    ),
    Component(
        "urban",
        "services.urban.main:build_app",
        DEFAULT_PORTS["urban"],
        "urban-planning and environmental permit files (CoDT), NOTICe, deadlines",
    ),
    Component(
        "gateway",
        "gateway.main:build_app",
        DEFAULT_PORTS["gateway"],
        "interop gateway, delivery API and dashboard",
    ),
)

BY_NAME = {component.name: component for component in COMPONENTS}
