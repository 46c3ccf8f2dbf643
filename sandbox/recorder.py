"""What the sandbox received, and the faults it was told to inject.

Each simulated service records every request under its idempotency key: how
often the key arrived, and the one answer it gave the first time (a repeated
key gets the same answer and publishes nothing new, as a real target that
honours idempotency keys would).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FaultSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latency_ms: int = Field(default=0, ge=0, le=60_000)
    #: Share of requests answered 503 before anything is processed.
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Share of requests that hang for ``timeout_seconds`` before being processed.
    timeout_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    timeout_seconds: float = Field(default=30.0, ge=0.0, le=600.0)


@dataclass
class Reception:
    service: str
    idempotency_key: str
    tenant: str | None
    first_received_at: datetime
    arrivals: int
    answer: dict[str, Any]
    traceparent: str | None
    summary: dict[str, Any] = field(default_factory=dict)


class Recorder:
    def __init__(self) -> None:
        self._receptions: dict[tuple[str, str], Reception] = {}
        self._faults: dict[str, FaultSettings] = {}
        self._lock = asyncio.Lock()
        self._random = random.Random()

    def set_faults(self, service: str, faults: FaultSettings) -> None:
        self._faults[service] = faults

    def faults_for(self, service: str) -> FaultSettings:
        return self._faults.get(service) or self._faults.get("*") or FaultSettings()

    async def inject_faults(self, service: str) -> bool:
        """Sleep as configured; return True when this request must fail with a 503."""
        faults = self.faults_for(service)
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.timeout_rate and self._random.random() < faults.timeout_rate:
            await asyncio.sleep(faults.timeout_seconds)
        return bool(faults.error_rate and self._random.random() < faults.error_rate)

    def seen(self, service: str, idempotency_key: str) -> Reception | None:
        """A repeated key: count the arrival and return the first answer."""
        reception = self._receptions.get((service, idempotency_key))
        if reception is not None:
            reception.arrivals += 1
        return reception

    def record(
        self,
        service: str,
        idempotency_key: str,
        *,
        tenant: str | None,
        answer: dict[str, Any],
        traceparent: str | None,
        summary: dict[str, Any] | None = None,
    ) -> Reception:
        reception = Reception(
            service=service,
            idempotency_key=idempotency_key,
            tenant=tenant,
            first_received_at=datetime.now(UTC),
            arrivals=1,
            answer=answer,
            traceparent=traceparent,
            summary=summary or {},
        )
        self._receptions[(service, idempotency_key)] = reception
        return reception

    @property
    def lock(self) -> asyncio.Lock:
        """Held from ``seen`` to ``record`` so two copies of one key cannot both publish."""
        return self._lock

    def receptions(self, service: str | None = None) -> list[Reception]:
        return [r for (s, _), r in self._receptions.items() if service in (None, s)]

    def clear(self) -> None:
        self._receptions.clear()
        self._faults.clear()
