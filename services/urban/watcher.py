"""The deadline watcher: announces each legal deadline ``approaching`` and ``exceeded``, once.

It pages through the files whose ``next_warning_on`` has come, by that
column's index and in small pages, so it never holds more than a page of
files, whatever their number. Each file is handled in its own transaction:
the warnings emitted (``urban.file.deadline_warning.v1``), the row that
remembers each of them (so none is emitted twice, even by two watchers) and
the file's next dates commit together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import date, datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import new_event
from contracts.events.urban import DeadlineWarning
from kernel.database import utcnow
from kernel.days import commune_day
from kernel.outbox import OutboxRelay, stage, transaction
from kernel.telemetry import tracer
from services.urban import deadlines
from services.urban.configuration import TenantUrban
from services.urban.permits import SOURCE, facts_of, refresh_deadlines, warnings_sent
from services.urban.tables import DeadlineWarningSent, PermitFile

log = logging.getLogger(__name__)

PAGE_SIZE = 200


class DeadlineWatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        relay: OutboxRelay | None,
        urban_settings: Mapping[str, TenantUrban],
        *,
        clock: Callable[[], datetime] = utcnow,
        interval_seconds: float = 60.0,
    ) -> None:
        self._sessions = sessions
        self._relay = relay
        self._settings = urban_settings
        self._clock = clock
        self._interval = interval_seconds
        self._tracer = tracer("urban")

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # the database is away: try again at the next round
                log.exception("urban deadline watcher failed; retrying")
            await asyncio.sleep(self._interval)

    async def check_once(self) -> int:
        """Emit every warning due today; return how many were emitted."""
        now = self._clock()
        today = commune_day(now)
        emitted = 0
        after: tuple[date, str] | None = None
        while True:
            async with self._sessions() as session:
                columns = (PermitFile.id, PermitFile.next_warning_on, PermitFile.tenant)
                query = select(*columns).where(PermitFile.next_warning_on <= today)
                if after is not None:
                    # Keyset paging: a file that failed stays behind us instead of looping.
                    query = query.where(
                        or_(
                            PermitFile.next_warning_on > after[0],
                            and_(PermitFile.next_warning_on == after[0], PermitFile.id > after[1]),
                        )
                    )
                page = (
                    await session.execute(
                        query.order_by(PermitFile.next_warning_on, PermitFile.id).limit(PAGE_SIZE)
                    )
                ).all()
            for file_id, due, tenant in page:
                try:
                    # A span, so a trace, per file: run from no request, its warnings were
                    # staged with no traceparent, and each consumer and gateway route of
                    # theirs began a trace of its own, tied to nothing.
                    with self._tracer.start_as_current_span(
                        "deadline watch",
                        attributes={"hub.tenant": tenant, "hub.urban.file_id": file_id},
                    ):
                        emitted += await self._check_file(file_id, today, now)
                except Exception:
                    # This file's warnings wait for the next round; the other files' do not.
                    log.exception("urban deadline watcher: file %s not checked", file_id)
                after = (due, file_id)
            if len(page) < PAGE_SIZE:
                return emitted

    async def _check_file(self, file_id: str, today: date, now: datetime) -> int:
        async with transaction(self._sessions, self._relay) as session:
            file = await session.get(PermitFile, file_id, with_for_update=True)
            if file is None or file.next_warning_on is None or file.next_warning_on > today:
                return 0  # changed since the page was read
            settings = self._settings.get(file.tenant)
            if settings is None:
                return 0
            already = await warnings_sent(session, file.id)
            found = deadlines.deadlines(facts_of(file))
            due = deadlines.warnings_due(found, today, settings.warning_days, already)
            for deadline, level in due:
                data = DeadlineWarning.model_validate(
                    {
                        "file_id": file.id,
                        "reference": file.reference,
                        "deadline": deadline.name,
                        "due_on": deadline.due_on,
                        "level": level,
                    }
                )
                stage(session, new_event(data, tenant=file.tenant, subject=file.id, source=SOURCE))
                sent = DeadlineWarningSent(
                    file_id=file.id,
                    deadline=deadline.name,
                    level=level,
                    due_on=deadline.due_on,
                    emitted_at=now,
                )
                if (deadline.name, level) in already:  # sent for a due date that moved since
                    await session.merge(sent)
                else:
                    session.add(sent)
                already[(deadline.name, level)] = deadline.due_on
                log.info(
                    "tenant %s: %s deadline of %s (%s) %s",
                    file.tenant,
                    deadline.name,
                    file.reference,
                    deadline.due_on,
                    level,
                )
            await refresh_deadlines(session, file, settings, today, already=already)
            return len(due)
