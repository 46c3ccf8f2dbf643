"""The urban deadline watcher (services/urban/watcher.py) on SQLite: its warnings' trace."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import from_record
from contracts.events.urban import Applicant, DeadlineWarning, Parcel
from kernel.database import write_transaction
from kernel.outbox import OutboxMessage
from services.urban import permits
from services.urban import watcher as watcher_module
from services.urban.configuration import DecisionTarget, TenantUrban
from services.urban.deadlines import last_day
from services.urban.tables import MIGRATIONS
from services.urban.watcher import DeadlineWatcher
from tests.support.databases import sqlite_sessions

SAMBREVILLE = "92137"
SETTINGS = TenantUrban(SAMBREVILLE, None, warning_days=5, decision=DecisionTarget())
RECEIVED = date(2026, 3, 2)
#: W3C trace context: version, trace id, parent span id, flags (ids never all zeros).
TRACEPARENT = re.compile(r"00-(?P<trace>(?!0{32})[0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "urban.db", "urban", MIGRATIONS) as sessions:
        yield sessions


async def test_each_files_deadline_warnings_are_staged_in_a_trace_of_its_own(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The watcher's spans on a provider of the test's (none is set: no span records).
    monkeypatch.setattr(watcher_module, "tracer", provider.get_tracer, raising=False)
    new = permits.checked_new_file(
        "permis_urbanisme",
        "Construction d'une maison unifamiliale",
        RECEIVED,
        [Applicant(kind="enterprise", identifier="0403170701", name="SA Construct")],
        [Parcel(capakey="92137A0123/00B000")],
        today=RECEIVED,
    )
    opened_at = datetime.combine(RECEIVED, time(12), tzinfo=UTC)
    file_ids = []
    for _ in range(2):
        async with write_transaction(sessions) as session:
            file = await permits.open_file(session, SETTINGS, new, opened_at, origin="counter")
            file_ids.append(file.id)
    # Five days before the completeness deadline: each file's is approaching.
    moment = datetime.combine(last_day(RECEIVED, 20) - timedelta(days=5), time(12), tzinfo=UTC)
    watcher = DeadlineWatcher(sessions, None, {SAMBREVILLE: SETTINGS}, clock=lambda: moment)

    assert await watcher.check_once() == 2

    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    warnings = [
        row for row in rows if from_record(row.headers, row.value).type == DeadlineWarning.TYPE
    ]
    traces = []
    for row in warnings:
        parent = TRACEPARENT.fullmatch(row.headers.get("traceparent", ""))
        assert parent is not None, row.headers
        traces.append(parent["trace"])
    spans = exporter.get_finished_spans()
    assert [(span.name, dict(span.attributes or {})) for span in spans] == [
        ("deadline watch", {"hub.tenant": SAMBREVILLE, "hub.urban.file_id": file_id})
        for file_id in sorted(file_ids)  # the watcher's order, by date then id
    ]
    assert sorted(traces) == sorted(f"{span.context.trace_id:032x}" for span in spans)
    assert traces[0] != traces[1]
