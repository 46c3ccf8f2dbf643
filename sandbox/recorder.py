"""What the sandbox received, and the faults it was told to inject.

Each simulated service records every request it processed under its
idempotency key: how often the key arrived (``arrivals``), and the one answer
it gave the first time (a repeated key gets the same answer and publishes
nothing new, as a real target that honours idempotency keys would).

``arrivals`` counts only the requests that got past fault injection and were
answered as that key: the first one and its idempotent repeats. A key reused
for another message is refused, and counted apart in ``reused``: it is not a
repeat of the first message. Every request that carried an
``Idempotency-Key``, the ones answered by an injected 503 or held by an
injected timeout included, is counted apart in ``attempts``: the only trace of
a retry after a fault.

Simulators that keep state of their own beside the recorder (booked invoice
numbers, ...) register a reset hook (``on_reset``): clearing what was received
runs it, so that a key forgotten by the recorder meets no leftover of it.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
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
    #: Requests refused because they reused this key for another message.
    reused: int = 0


class Recorder:
    def __init__(self) -> None:
        self._receptions: dict[tuple[str, str], Reception] = {}
        self._faults: dict[str, FaultSettings] = {}
        #: (service, idempotency key) → requests that carried it, faulted ones included; the
        #: key is the Idempotency-Key header (for Stésud, the file's name)
        self._attempts: Counter[tuple[str, str]] = Counter()
        self._lock = asyncio.Lock()
        self._random = random.Random()
        self._reset_hooks: list[Callable[[], None]] = []

    def set_faults(self, service: str, faults: FaultSettings) -> None:
        self._faults[service] = faults

    def faults_for(self, service: str) -> FaultSettings:
        return self._faults.get(service) or self._faults.get("*") or FaultSettings()

    async def inject_faults(self, service: str, idempotency_key: str | None) -> bool:
        """Count the attempt, sleep as configured; return True when it must fail with a 503.

        The attempt is counted first: a client that gives up during an injected
        timeout never lets the request get further.
        """
        if idempotency_key:
            self._attempts[(service, idempotency_key)] += 1
        faults = self.faults_for(service)
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.timeout_rate and self._random.random() < faults.timeout_rate:
            await asyncio.sleep(faults.timeout_seconds)
        return bool(faults.error_rate and self._random.random() < faults.error_rate)

    def first(self, service: str, idempotency_key: str) -> Reception | None:
        """The first reception of a repeated key, without counting this arrival.

        The caller compares the request with it first, then counts the request with
        ``count_repeat`` (the same message: it gets the first answer) or ``count_reuse``
        (another message: refused), so that a refusal is never counted as an arrival.
        """
        return self._receptions.get((service, idempotency_key))

    def count_repeat(self, reception: Reception) -> Reception:
        """Count an idempotent repeat of ``reception``'s message."""
        reception.arrivals += 1
        return reception

    def count_reuse(self, reception: Reception) -> None:
        """Count a request refused for reusing ``reception``'s key for another message."""
        reception.reused += 1

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
        """Held from ``first`` to ``record`` so two copies of one key cannot both publish."""
        return self._lock

    def receptions(self, service: str | None = None) -> list[Reception]:
        return [r for (s, _), r in self._receptions.items() if service in (None, s)]

    def attempts(self, service: str | None = None) -> list[tuple[str, str, int]]:
        """(service, Idempotency-Key header, requests that carried it), faulted ones included."""
        return [(s, key, n) for (s, key), n in self._attempts.items() if service in (None, s)]

    def on_reset(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` whenever what was received is cleared (``clear_received``)."""
        self._reset_hooks.append(hook)

    def clear_received(self) -> None:
        """Forget what was received, and what the reset hooks clear.

        The fault settings stay until changed or cleared.
        """
        self._receptions.clear()
        self._attempts.clear()
        for hook in self._reset_hooks:
            hook()

    def clear_faults(self) -> None:
        self._faults.clear()
