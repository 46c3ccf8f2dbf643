"""What the public sees of a decision, written once, in the transaction that publishes it.

The published title, decision text and annex names are pseudonymised here
(``pseudonymise.py``; rules in docs/publication.md), so the OParl API
(``oparl.py``) serves stored rows and never runs the rules on a read. The
annexes' bytes are published as they are: their published file name is
``annexe-<n>.<extension>``, since an uploaded file name often carries the
applicant's name.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from pathlib import PurePosixPath

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.database import next_in_sequence, utcnow
from kernel.migrations import table_of
from services.meeting.pseudonymise import Pseudonymiser
from services.meeting.tables import (
    Annex,
    Item,
    Meeting,
    PublicationGeneration,
    PublishedDecision,
    PublishedFile,
)

_EXTENSION = re.compile(r"^\.[a-z0-9]{1,8}$")


def pseudonymiser_for(item: Item, meeting: Meeting) -> Pseudonymiser:
    """The concerned party is replaced when a person (a company is a public legal person); the
    meeting's attendees, the commune's officials acting in office, are kept."""
    private = [item.concerned_party_name or ""] if item.concerned_party_kind == "person" else []
    officials = [str(attendee.get("name") or "") for attendee in meeting.attendees]
    return Pseudonymiser(private_persons=private, officials=officials)


def published_file_name(position: int, filename: str) -> str:
    extension = PurePosixPath(filename).suffix.lower()
    return f"annexe-{position + 1}{extension if _EXTENSION.match(extension) else ''}"


async def _position_in_meeting(session: AsyncSession, item: Item) -> int:
    """The decision's rank among its meeting's numbered decisions: fixed once the meeting closed."""
    numbers = await session.scalars(
        select(Item.decision_number).where(
            Item.tenant == item.tenant,
            Item.meeting_id == item.meeting_id,
            Item.decision_number.is_not(None),
        )
    )
    ordered = sorted((n for n in numbers.all() if n is not None), key=lambda n: (len(n), n))
    return ordered.index(item.decision_number) if item.decision_number in ordered else 0


async def publication_turn(session: AsyncSession, tenant: str) -> datetime:
    """Take the tenant's turn to publish, and the moment to publish at.

    OParl's lists are walked in (``published_at``, id) order. A publication timed before
    another but committed after it (its annexes longer to hash) landed behind a crawler's
    cursor: never seen, by the walk nor by ``modified_since``. So the tenant's publications
    take turns on its generation row (locked until commit on PostgreSQL; SQLite's writers
    take turns already), the clock is read once the turn is taken, and a moment is always
    after the tenant's last one, should the clock (or another replica's) be behind it.
    """
    await next_in_sequence(
        session, table_of(PublicationGeneration), {"tenant": tenant}, "generation"
    )
    last = await session.scalar(
        select(func.max(PublishedDecision.published_at)).where(PublishedDecision.tenant == tenant)
    )
    now = utcnow()
    return now if last is None or now > last else last + timedelta(microseconds=1)


async def record_publication(
    session: AsyncSession, item: Item, meeting: Meeting, now: datetime
) -> PublishedDecision:
    """Write the decision as the public sees it; in the turn ``publication_turn`` took."""
    if item.decision_number is None or item.decision is None:
        raise ValueError(f"item {item.id} has no numbered decision to publish")
    pseudonymise = pseudonymiser_for(item, meeting)
    title = pseudonymise(item.title)
    resolution_text = pseudonymise(item.decision_text or "")
    annexes = await session.execute(
        select(
            Annex.id, Annex.position, Annex.title, Annex.filename, Annex.media_type, Annex.content
        )
        .where(
            Annex.item_id == item.id,
            Annex.tenant == item.tenant,
            Annex.publishable.is_(True),  # an annex's bytes are not pseudonymised
        )
        .order_by(Annex.position)
    )
    files = [
        PublishedFile(
            annex_id=annex_id,
            item_id=item.id,
            tenant=item.tenant,
            meeting_id=meeting.id,
            position=position,
            name=pseudonymise(annex_title),
            file_name=published_file_name(position, filename),
            mime_type=media_type,
            size=len(content),
            sha1=hashlib.sha1(content).hexdigest(),
            published_at=now,
        )
        for annex_id, position, annex_title, filename, media_type, content in annexes.tuples()
    ]
    published = PublishedDecision(
        item_id=item.id,
        tenant=item.tenant,
        meeting_id=meeting.id,
        meeting_config=item.meeting_config,
        meeting_date=meeting.date,
        position=await _position_in_meeting(session, item),
        decision=item.decision,
        decision_number=item.decision_number,
        title=title,
        resolution_text=resolution_text,
        files=[
            {
                "annex_id": file.annex_id,
                "name": file.name,
                "file_name": file.file_name,
                "mime_type": file.mime_type,
                "size": file.size,
                "sha1": file.sha1,
            }
            for file in files
        ],
        published_at=now,
    )
    session.add(published)
    await session.flush()  # the decision row first: the files refer to it
    session.add_all(files)
    return published
