"""Base class and registry of event data models.

Each event type has a stable dotted name ending in its version
(``courrier.outgoing_mail.send_requested.v1``). A breaking change is a new
class with ``.v2``; both stay registered while consumers move over.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

_TYPE_PATTERN = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+\.v[0-9]+$")
_REGISTRY: dict[str, type[EventData]] = {}


class EventData(BaseModel):
    """The JSON body of one CloudEvent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    TYPE: ClassVar[str]
    TOPIC: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "TYPE" not in cls.__dict__:
            return
        if not _TYPE_PATTERN.match(cls.TYPE):
            raise TypeError(f"{cls.__name__}.TYPE {cls.TYPE!r} is not a dotted name ending in .vN")
        if cls.TYPE in _REGISTRY:
            raise TypeError(f"event type {cls.TYPE} is declared twice")
        _REGISTRY[cls.TYPE] = cls

    @classmethod
    def version(cls) -> str:
        return cls.TYPE.rsplit(".", 1)[1]


def event_class_for(event_type: str) -> type[EventData] | None:
    return _REGISTRY.get(event_type)


def all_event_classes() -> list[type[EventData]]:
    return sorted(_REGISTRY.values(), key=lambda cls: (cls.TOPIC, cls.TYPE))
