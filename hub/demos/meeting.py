"""Meeting's demo: the clerks and the college, from agenda items to delivered decisions.

One meeting per configuration of the tenant. Items come from the clerks'
tool over REST and from an existing WS4PM client (zeep, loaded from the
WSDL the service serves), in every category in turn, so that some decisions
go to the regional oversight, some must be published, and some name the
person or company they concern (notified by courrier through the e-Box);
an item owing nothing else always names one. Each is proposed, validated,
presented and decided; the meetings are closed, what must be published is
published, and every decision is followed until its deliveries are done.

Delivered: a decision whose every required delivery (oversight,
publication, notification) completed (``deliveries_complete``), and whose
oversight transmission, when it owes one, the sandbox's oversight received.
Items that the urban tool asks for by event are decided by ``hub.demos.urban``.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pybase64
import zeep
from zeep.exceptions import Error as ZeepError
from zeep.transports import AsyncTransport

from hub.demos import LIMITS, DemoRun, ServiceResult, StepFailed, call, pages
from hub.traffic import letter_pdf, random_enterprise_number, random_niss
from kernel.tenants import load_tenants
from services.meeting.configuration import (
    Category,
    MeetingConfig,
    Ws4pmClient,
    load_meeting_settings,
)

SCOPES = ("meeting:read", "meeting:write")
#: Every third item whose decision owes the outside something comes through WS4PM.
WS4PM_EVERY = 3
DECISIONS = ("accepted", "accepted_with_amendments", "refused")
DECISION_WEIGHTS = (6, 2, 2)
ATTENDEES = (
    {"name": "Claire Lejeune", "role": "bourgmestre", "present": True},
    {"name": "Marc Thiry", "role": "échevin", "present": True},
    {"name": "Nadia Benali", "role": "échevine", "present": True},
    {"name": "Paul Gérard", "role": "directeur général", "present": True},
)
PEOPLE = ("Dupont, Marie", "Lambert, Luc", "Martin, Aïcha", "Renard, Hugo", "Simon, Léa")
COMPANIES = ("Construct SA", "Toitures Mosanes SRL", "Bureau Verdi SC", "Jardins du Sud SRL")
SUBJECTS: dict[str, tuple[str, ...]] = {
    "urbanisme": ("Permis d'urbanisme : extension d'une habitation", "Division d'un bien"),
    "travaux": ("Réfection de voirie : attribution du marché", "Égouttage : avenant n°2"),
    "personnel": ("Nomination d'un agent administratif", "Congé pour interruption de carrière"),
    "finances": ("Modification budgétaire n°1", "Octroi d'un subside à une association"),
    "reglements": ("Règlement-taxe sur les secondes résidences", "Règlement de police"),
}


@dataclass(frozen=True)
class PlannedItem:
    """One agenda item the demo's clerks bring, and what the college will decide."""

    number: int
    config: MeetingConfig
    category: Category | None
    via_ws4pm: bool
    concerned_party: dict[str, str] | None
    decision: str
    title: str

    @property
    def proposing_service(self) -> str:
        services = self.config.proposing_services
        if not services:
            return "secretariat"
        if self.category is not None and self.category.id in services:
            return self.category.id
        return services[self.number % len(services)]


def owes_the_outside(category: Category | None) -> bool:
    return category is not None and (category.oversight or category.publication)


def concerned_party(rng: random.Random) -> dict[str, str]:
    if rng.random() < 0.75:
        return {"kind": "person", "identifier": random_niss(rng), "name": rng.choice(PEOPLE)}
    identifier = random_enterprise_number(rng)
    return {"kind": "enterprise", "identifier": identifier, "name": rng.choice(COMPANIES)}


def plan_items(
    configs: list[MeetingConfig], count: int, rng: random.Random, ws4pm: bool
) -> list[PlannedItem]:
    """Configurations and their categories in turn; a decision owing nothing names a party."""
    planned = []
    for number in range(count):
        config = configs[number % len(configs)]
        turn = number // len(configs)
        category = config.categories[turn % len(config.categories)] if config.categories else None
        owes = owes_the_outside(category)
        via_ws4pm = ws4pm and owes and number % WS4PM_EVERY == WS4PM_EVERY - 1
        party = None if via_ws4pm or (owes and number % 2) else concerned_party(rng)
        subject = rng.choice(SUBJECTS.get(category.id if category else "", ("Point divers",)))
        planned.append(
            PlannedItem(
                number=number,
                config=config,
                category=category,
                via_ws4pm=via_ws4pm,
                concerned_party=party,
                decision=rng.choices(DECISIONS, weights=DECISION_WEIGHTS)[0],
                title=f"{subject} (démo {number + 1})",
            )
        )
    return planned


def draft_decision(config: MeetingConfig) -> str:
    body = "Le Collège communal" if config.kind == "college" else "Le Conseil communal"
    return f"{body} décide d'approuver la proposition."


def annex(item: PlannedItem) -> tuple[str, bytes]:
    filename = f"projet-{item.number + 1}.pdf"
    return filename, letter_pdf(item.title, f"projet de décision {item.number + 1}")


class MeetingClerks:
    """The clerks' tool (REST) and the WS4PM client bringing items to one tenant's meetings."""

    def __init__(self, rest: httpx.AsyncClient, ws4pm: zeep.AsyncClient | None, run_id: str):
        self.rest, self.ws4pm, self.run_id = rest, ws4pm, run_id

    async def schedule(self, config: MeetingConfig) -> str:
        body = {
            "meeting_config": config.id,
            # Tomorrow: a meeting still to come accepts items (WS4PM's meetingsAcceptingItems).
            "date": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            "place": "Hôtel de ville, salle du Collège"
            if config.kind == "college"
            else "Hôtel de ville, salle du Conseil",
            "attendees": list(ATTENDEES),
        }
        return str((await call(self.rest, "POST", "/v1/meetings", body))["id"])

    async def bring(self, item: PlannedItem, meeting_id: str) -> str:
        """The item's id, presented in ``meeting_id``."""
        if item.via_ws4pm and self.ws4pm is not None:
            return await self._bring_by_ws4pm(item, meeting_id)
        filename, content = annex(item)
        body: dict[str, Any] = {
            "meeting_config": item.config.id,
            "title": item.title,
            "proposing_service": item.proposing_service,
            "category": item.category.id if item.category else None,
            "motivation": "Vu le Code de la démocratie locale et de la décentralisation.",
            "decision_text": draft_decision(item.config),
            "concerned_party": item.concerned_party,
            "annexes": [
                {
                    "title": "Projet de décision",
                    "filename": filename,
                    "content_base64": pybase64.b64encode(content).decode(),
                    "publishable": True,  # the draft decision: nothing private in it
                }
            ],
        }
        item_id = str((await call(self.rest, "POST", "/v1/items", body))["id"])
        await call(self.rest, "POST", f"/v1/items/{item_id}/propose")
        await call(self.rest, "POST", f"/v1/items/{item_id}/validate")
        await call(self.rest, "POST", f"/v1/items/{item_id}/present", {"meeting_id": meeting_id})
        return item_id

    async def _bring_by_ws4pm(self, item: PlannedItem, meeting_id: str) -> str:
        assert self.ws4pm is not None
        filename, content = annex(item)
        data = {
            "title": item.title,
            "category": item.category.id if item.category else None,
            "description": "Point introduit par l'application métier (WS4PM).",
            "motivation": "Vu le Code de la démocratie locale et de la décentralisation.",
            "decision": draft_decision(item.config),
            "preferredMeeting": meeting_id,
            "externalIdentifier": f"demo-{self.run_id}-{item.number + 1}",
            "annexes": [{"title": "Projet de décision", "filename": filename, "file": content}],
        }
        try:
            answer = await self.ws4pm.service.createItem(
                meetingConfigId=item.config.id,
                proposingGroupId=item.proposing_service,
                creationData=data,
                wfTransitions=["propose", "validate", "present"],
            )
        except (ZeepError, httpx.HTTPError) as exc:
            raise StepFailed(f"WS4PM createItem: {exc}") from exc
        if answer.warnings:
            raise StepFailed(f"WS4PM createItem {answer.UID}: {'; '.join(answer.warnings)}")
        return str(answer.UID)


async def ws4pm_client(base_url: str, client: Ws4pmClient) -> zeep.AsyncClient:
    """A zeep client of the service's WS4PM facade, loaded from the WSDL it serves."""
    transport = AsyncTransport(
        client=httpx.AsyncClient(
            auth=httpx.BasicAuth(client.username, client.password), timeout=30, limits=LIMITS
        ),
        wsdl_client=httpx.Client(timeout=30),
    )
    # Loading the WSDL is synchronous in zeep: off the event loop.
    return await asyncio.to_thread(zeep.AsyncClient, f"{base_url}/ws4pm?wsdl", transport=transport)


async def close_ws4pm(client: zeep.AsyncClient | None) -> None:
    if client is not None:
        await client.transport.aclose()
        client.transport.wsdl_client.close()


async def meeting_demo(run: DemoRun) -> ServiceResult:
    result = ServiceResult()
    blocks = load_meeting_settings(load_tenants(run.settings.tenants_dir))
    block = blocks.get(run.tenant)
    if block is None or not block.configurations:
        result.submitted = result.failed = run.count
        result.problems.append(f"tenant {run.tenant} has no meeting configuration")
        return result
    rng = random.Random()
    ws4pm = (
        await ws4pm_client(run.urls["meeting"], block.ws4pm_clients[0])
        if block.ws4pm_clients
        else None
    )
    rest = run.client("meeting", SCOPES)
    sandbox = run.client("sandbox")
    try:
        async with rest, sandbox:
            clerks = MeetingClerks(rest, ws4pm, uuid.uuid4().hex[:8])
            configs = list(block.configurations.values())
            planned = plan_items(configs, run.count, rng, ws4pm is not None)
            result.submitted = len(planned)
            await _hold_meetings(run, clerks, configs, planned, result, sandbox)
    finally:
        await close_ws4pm(ws4pm)
    return result


async def _hold_meetings(
    run: DemoRun,
    clerks: MeetingClerks,
    configs: list[MeetingConfig],
    planned: list[PlannedItem],
    result: ServiceResult,
    sandbox: httpx.AsyncClient,
) -> None:
    try:
        meetings = {config.id: await clerks.schedule(config) for config in configs}
    except StepFailed as exc:
        result.failed = len(planned)
        result.problems.append(f"no meeting could be scheduled: {exc}")
        return
    slots = asyncio.Semaphore(8)
    brought: dict[str, PlannedItem] = {}
    decided: dict[str, dict[str, Any]] = {}

    def lost(item: PlannedItem, exc: StepFailed) -> None:
        result.failed += 1
        result.problems.append(f"item {item.number + 1} ({item.config.id}): {exc}")

    submit = run.task("meeting: clerks bring items", len(planned))

    async def bring(item: PlannedItem) -> None:
        async with slots:
            try:
                brought[await clerks.bring(item, meetings[item.config.id])] = item
            except StepFailed as exc:
                lost(item, exc)
        run.advance(submit)

    await asyncio.gather(*(bring(item) for item in planned))

    session = run.task("meeting: the college decides", len(brought))

    async def decide(item_id: str, item: PlannedItem) -> None:
        body = {"decision": item.decision}
        async with slots:
            try:
                decided[item_id] = await call(
                    clerks.rest, "POST", f"/v1/items/{item_id}/decide", body
                )
            except StepFailed as exc:
                lost(item, exc)
        run.advance(session)

    await asyncio.gather(*(decide(item_id, item) for item_id, item in brought.items()))
    for config_id, meeting_id in meetings.items():
        try:
            await call(clerks.rest, "POST", f"/v1/meetings/{meeting_id}/close")
        except StepFailed as exc:
            result.problems.append(f"the {config_id} meeting could not be closed: {exc}")

    async def publish(item_id: str) -> None:
        async with slots:
            try:
                await call(clerks.rest, "POST", f"/v1/items/{item_id}/publish")
            except StepFailed as exc:
                result.problems.append(f"decision of item {item_id} not published: {exc}")

    await asyncio.gather(
        *(publish(item_id) for item_id, view in decided.items() if view["publication_required"])
    )
    await _follow_deliveries(run, clerks.rest, list(meetings.values()), decided, result)
    await _check_oversight(sandbox, run.tenant, decided, result)


async def _follow_deliveries(
    run: DemoRun,
    rest: httpx.AsyncClient,
    meeting_ids: list[str],
    decided: dict[str, dict[str, Any]],
    result: ServiceResult,
) -> None:
    """Each decision until every delivery it owes is done, or until the run's timeout."""
    follow = run.task("meeting: oversight, publication, notification", len(decided))
    pending = set(decided)
    views: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + run.timeout
    while pending and time.monotonic() < deadline:
        for meeting_id in meeting_ids:
            try:
                listed = await pages(rest, "/v1/items", {"meeting_id": meeting_id})
            except StepFailed as exc:
                result.problems.append(str(exc))
                continue
            views.update((view["id"], view) for view in listed)
        for item_id in list(pending):
            view = views.get(item_id)
            if view is None:
                continue
            failed = [d for d in view["deliveries"] if d["status"] == "failed"]
            # A failed notification is final (courrier falls back to paper); a failed
            # transmission is retried by an operator, so it is waited for.
            if view["deliveries_complete"] or any(d["kind"] == "notification" for d in failed):
                pending.discard(item_id)
                run.advance(follow)
                _count(view, result)
        if pending:
            await asyncio.sleep(0.5)
    for item_id in pending:
        view = views.get(item_id, decided[item_id])
        result.failed += 1
        result.problems.append(
            f"{view['decision_number']}: not delivered within {run.timeout:.0f} s ("
            + ", ".join(f"{d['kind']} {d['status']}" for d in view["deliveries"])
            + ")"
        )
    latest = {item_id: views[item_id] for item_id in decided if item_id in views}
    decided.update(latest)


def _count(view: dict[str, Any], result: ServiceResult) -> None:
    if not view["deliveries_complete"]:
        result.failed += 1
        result.problems.append(
            f"{view['decision_number']}: "
            + "; ".join(f"{d['kind']} failed: {d['detail']}" for d in view["deliveries"])
        )
        return
    result.delivered += 1
    decided_at = datetime.fromisoformat(view["decided_at"])
    last = max(
        (datetime.fromisoformat(d["updated_at"]) for d in view["deliveries"]), default=decided_at
    )
    result.latencies_ms.append(max(0.0, (last - decided_at).total_seconds() * 1000))


async def _check_oversight(
    sandbox: httpx.AsyncClient,
    tenant: str,
    decided: dict[str, dict[str, Any]],
    result: ServiceResult,
) -> None:
    """A decision owing oversight counts as delivered only if the Region received it."""
    response = await sandbox.get("/_sandbox/received", params={"service": "oversight"})
    received = {
        item["summary"]["item_id"]
        for item in (response.json()["items"] if response.status_code == 200 else [])
        if item["tenant"] == tenant
    }
    for item_id, view in decided.items():
        if view["oversight_applies"] and view["deliveries_complete"] and item_id not in received:
            result.delivered -= 1
            result.failed += 1
            result.problems.append(
                f"{view['decision_number']}: oversight done, but the Region never received it"
            )
