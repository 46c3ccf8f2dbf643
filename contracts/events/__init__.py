"""Every event type the hub publishes, by topic.

Importing this package registers them all (``base.event_class_for``).
"""

from contracts.events import courrier, factures, gateway, meeting, outside, oversight, peppol, urban
from contracts.events.base import EventData, all_event_classes, event_class_for

__all__ = [
    "EventData",
    "all_event_classes",
    "courrier",
    "event_class_for",
    "factures",
    "gateway",
    "meeting",
    "outside",
    "oversight",
    "peppol",
    "urban",
]
