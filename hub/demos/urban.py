"""Urban's demo: permit files from the SPW's NOTICe notification to the decision's notification.

The Region notifies the commune of permit requests (seeded in the sandbox's
NOTICe: applicants from the sandbox's National Register or companies,
parcels, a PDF plan); the gateway brings them to urban, which opens a file
each. The demo plays the urban clerk: it declares each file complete (urban
answers NOTICe ``PARTIAL``), asks the fire service's opinion on every fourth
one (the sandbox answers; the last opinion in asks for the decision by
itself) and asks the college for the decision on the others. It also plays
the college: the item urban asked for (found by the file's reference, its
external identifier) is proposed, validated, presented and decided in a
meeting of the tenant's decision configuration, which is then closed and
its decisions published.

Delivered: a file whose ``FINAL`` response (the decision) NOTICe holds, and
whose decision reached the applicant (the meeting item's notification
delivery is done: courrier's mail was accepted by the e-Box).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pybase64

from hub.demos import DemoRun, ServiceResult, StepFailed, call, pages
from hub.traffic import letter_pdf, random_enterprise_number
from kernel.days import commune_day
from kernel.tenants import load_tenants
from sandbox.ksz_bcss import load_register
from services.urban.configuration import DecisionTarget, load_urban_settings

URBAN_SCOPES = ("urban:read", "urban:write")
MEETING_SCOPES = ("meeting:read", "meeting:write")
#: urban's answer to a change of a file that something else changed meanwhile.
CONCURRENT_CHANGE = "concurrent-file-change"
#: Every fourth file needs the fire service's opinion before its decision.
OPINION_EVERY = 4
FILE_TYPES = ("permis_urbanisme", "permis_urbanisme", "permis_environnement_2")
SUBJECTS = (
    "Construction d'une habitation unifamiliale",
    "Extension arrière d'une maison de rangée",
    "Transformation d'une grange en deux logements",
    "Construction d'un car-port et d'un abri de jardin",
    "Exploitation d'un atelier de menuiserie",
)
STREETS = ("rue de la Station", "rue du Moulin", "chaussée de Namur", "rue des Écoles")
COMPANIES = ("Immo Sambre SA", "Menuiserie Collard SRL", "Agri Condroz SC")
DECISIONS = ("accepted", "accepted_with_amendments", "refused")
DECISION_WEIGHTS = (7, 1, 2)


@dataclass
class PermitCase:
    """One request from NOTICe, followed from its notification to its notified decision."""

    number: int
    notification_id: str
    needs_opinion: bool
    decision: str
    seeded_at: float
    file_id: str | None = None
    reference: str | None = None
    item_id: str | None = None

    @property
    def stage(self) -> str:
        if self.file_id is None:
            return "no file opened from its notification"
        if self.item_id is None:
            return f"{self.reference}: the college was never asked for a decision"
        return f"{self.reference}: decided, but not notified to NOTICe and the applicant"


def notification(
    rng: random.Random, case: PermitCase, instance: str, register: list[dict[str, Any]]
) -> dict[str, Any]:
    """A permit request as the Region notifies it: valid applicant, parcel and plan."""
    street = f"{rng.choice(STREETS)} {rng.randrange(1, 200)}, 5060 Sambreville"
    if case.number % 5 == 4 or not register:
        applicant = {
            "kind": "enterprise",
            "identifier": random_enterprise_number(rng),
            "name": rng.choice(COMPANIES),
        }
    else:
        person = register[case.number % len(register)]
        applicant = {
            "kind": "person",
            "identifier": str(person["niss"]),
            "name": f"{str(person['last_name']).title()}, {str(person['first_name']).title()}",
        }
    capakey = (
        f"{rng.randrange(92001, 92099):05d}{rng.choice('ABCDE')}{rng.randrange(1, 9999):04d}"
        f"/{rng.randrange(0, 3):02d}{rng.choice('ABC_')}{rng.randrange(0, 999):03d}"
    )
    subject = rng.choice(SUBJECTS)
    plan = letter_pdf(f"Plan d'implantation - {subject}", case.notification_id)
    return {
        "id": case.notification_id,
        "instance_code": instance,
        "file_type": FILE_TYPES[case.number % len(FILE_TYPES)],
        "subject": subject,
        "applicants": [applicant | {"address": street}],
        "parcels": [{"capakey": capakey, "address": street}],
        "documents": [
            {
                "filename": "plan-implantation.pdf",
                "media_type": "application/pdf",
                "content_base64": pybase64.b64encode(plan).decode(),
            }
        ],
    }


#: A case after a step, and what went wrong (None: it moved on).
Outcome = tuple[PermitCase, str | None]


class UrbanClerkAndCollege:
    """The urban clerk (urban's API) and the college (meeting's API) of one tenant."""

    def __init__(
        self,
        urban: httpx.AsyncClient,
        meeting: httpx.AsyncClient,
        sandbox: httpx.AsyncClient,
        target: DecisionTarget,
        instance: str,
        meeting_id: str,
    ) -> None:
        self.urban, self.meeting, self.sandbox = urban, meeting, sandbox
        self.target, self.instance, self.meeting_id = target, instance, meeting_id
        self._slots = asyncio.Semaphore(8)

    async def _each(
        self, cases: list[PermitCase], step: Callable[[PermitCase], Awaitable[None]]
    ) -> list[Outcome]:
        async def one(case: PermitCase) -> Outcome:
            async with self._slots:
                try:
                    await step(case)
                except StepFailed as exc:
                    return case, str(exc)
            return case, None

        return list(await asyncio.gather(*(one(case) for case in cases)))

    async def instruct(self, waiting: dict[str, PermitCase]) -> list[Outcome]:
        """The new files of ``waiting`` (by notification id): complete, then opinion or decision."""
        opened = []
        for file in await pages(self.urban, "/v1/files", {"state": "received"}):
            case = waiting.get(file["notice_notification_id"])
            if case is not None:
                case.file_id, case.reference = file["id"], file["reference"]
                opened.append(case)
        return await self._each(opened, self._instruct)

    async def _instruct(self, case: PermitCase) -> None:
        # The applicants' identity checks come in meanwhile, changing the file too.
        path = f"/v1/files/{case.file_id}"
        await call(self.urban, "POST", f"{path}/complete", again_on=CONCURRENT_CHANGE)
        if not case.needs_opinion:
            await call(self.urban, "POST", f"{path}/request-decision", again_on=CONCURRENT_CHANGE)
            return
        body = {
            "body": "SRI",
            "subject": f"Avis sur la sécurité incendie, dossier {case.reference}",
            "due_on": (commune_day(datetime.now(UTC)) + timedelta(days=30)).isoformat(),
        }
        await call(self.urban, "POST", f"{path}/opinions", body, again_on=CONCURRENT_CHANGE)

    async def decide(self, asked: dict[str, PermitCase]) -> list[Outcome]:
        """The items urban asked for (by file reference), presented and decided."""
        params = {"state": "created", "meeting_config": self.target.meeting_config}
        found = []
        for item in await pages(self.meeting, "/v1/items", params):
            case = asked.get(item["external_identifier"])
            if case is not None:
                case.item_id = item["id"]
                found.append(case)
        return await self._each(found, self._decide)

    async def _decide(self, case: PermitCase) -> None:
        path = f"/v1/items/{case.item_id}"
        await call(self.meeting, "POST", f"{path}/propose")
        await call(self.meeting, "POST", f"{path}/validate")
        await call(self.meeting, "POST", f"{path}/present", {"meeting_id": self.meeting_id})
        await call(self.meeting, "POST", f"{path}/decide", {"decision": case.decision})

    async def notified(self, decided: dict[str, PermitCase]) -> list[Outcome]:
        """Decided files now notified (FINAL at NOTICe, mail to the applicant), and failures."""
        response = await self.sandbox.get(
            "/_sandbox/notice/notifications", params={"instance_code": self.instance}
        )
        if response.is_error:
            raise StepFailed(f"NOTICe control: {response.status_code} {response.text[:200]}")
        final = {
            n["id"]
            for n in response.json()["items"]
            if any(r["state"] == "FINAL" for r in n["responses"])
        }
        items = await pages(self.meeting, "/v1/items", {"meeting_id": self.meeting_id})
        notifications = {
            item["id"]: next((d for d in item["deliveries"] if d["kind"] == "notification"), None)
            for item in items
        }
        outcomes: list[Outcome] = []
        for item_id, case in decided.items():
            delivery = notifications.get(item_id)
            if delivery is None:
                continue
            if delivery["status"] == "failed":
                outcomes.append((case, f"{case.reference}: {delivery['detail']}"))
            elif delivery["status"] == "done" and case.notification_id in final:
                outcomes.append((case, None))
        return outcomes

    async def close_and_publish(self, result: ServiceResult) -> None:
        try:
            await call(self.meeting, "POST", f"/v1/meetings/{self.meeting_id}/close")
            items = await pages(self.meeting, "/v1/items", {"meeting_id": self.meeting_id})
            for item in items:
                if item["publication_required"] and item["published_at"] is None:
                    await call(self.meeting, "POST", f"/v1/items/{item['id']}/publish")
        except StepFailed as exc:
            result.problems.append(f"college meeting {self.meeting_id}: {exc}")


async def urban_demo(run: DemoRun) -> ServiceResult:
    result = ServiceResult()
    tenants = load_tenants(run.settings.tenants_dir)
    if run.tenant not in tenants:
        result.submitted = result.failed = run.count
        result.problems.append(f"tenant {run.tenant} is not configured")
        return result
    instance = tenants[run.tenant].notice_instance
    if instance is None:
        result.submitted = result.failed = run.count
        result.problems.append(f"tenant {run.tenant} names no NOTICe instance (notice.instance)")
        return result
    target = load_urban_settings(tenants)[run.tenant].decision
    sandbox = run.client("sandbox")
    urban = run.client("urban", URBAN_SCOPES)
    meeting = run.client("meeting", MEETING_SCOPES)
    async with sandbox, urban, meeting:
        cases = await _seed(run, sandbox, instance, result)
        if not cases:
            return result
        try:
            meeting_id = await _schedule(meeting, target)
        except StepFailed as exc:
            result.failed += len(cases)
            result.problems.append(f"no college meeting could be scheduled: {exc}")
            return result
        actors = UrbanClerkAndCollege(urban, meeting, sandbox, target, instance, meeting_id)
        await _follow(run, actors, cases, result)
        await actors.close_and_publish(result)
    return result


async def _seed(
    run: DemoRun, sandbox: httpx.AsyncClient, instance: str, result: ServiceResult
) -> list[PermitCase]:
    rng = random.Random()
    register = list(load_register().values())
    batch = uuid.uuid4().hex[:10].upper()
    cases = [
        PermitCase(
            number=number,
            notification_id=f"NOT-DEMO-{batch}-{number + 1:05d}",
            needs_opinion=number % OPINION_EVERY == OPINION_EVERY - 1,
            decision=rng.choices(DECISIONS, weights=DECISION_WEIGHTS)[0],
            seeded_at=time.monotonic(),
        )
        for number in range(run.count)
    ]
    result.submitted = len(cases)
    seed = run.task("urban: the Region notifies permit requests", len(cases))
    body = {"notifications": [notification(rng, case, instance, register) for case in cases]}
    try:
        await call(sandbox, "POST", "/_sandbox/notice/notifications", body)
    except StepFailed as exc:
        result.failed = len(cases)
        result.problems.append(f"NOTICe: {exc}")
        return []
    run.advance(seed, len(cases))
    return cases


async def _schedule(meeting: httpx.AsyncClient, target: DecisionTarget) -> str:
    body = {
        "meeting_config": target.meeting_config,
        "date": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        "place": "Hôtel de ville, salle du Collège",
        "attendees": [
            {"name": "Claire Lejeune", "role": "bourgmestre", "present": True},
            {"name": "Marc Thiry", "role": "échevin de l'urbanisme", "present": True},
        ],
    }
    return str((await call(meeting, "POST", "/v1/meetings", body))["id"])


async def _follow(
    run: DemoRun,
    actors: UrbanClerkAndCollege,
    cases: list[PermitCase],
    result: ServiceResult,
) -> None:
    """Each case through its stages, a pass at a time, until all end or the timeout."""
    progress = run.task("urban: files decided and notified", len(cases))
    waiting = {case.notification_id: case for case in cases}
    asked: dict[str, PermitCase] = {}  # by file reference
    decided: dict[str, PermitCase] = {}  # by meeting item id
    deadline = time.monotonic() + run.timeout

    def lost(case: PermitCase, problem: str) -> None:
        result.failed += 1
        result.problems.append(problem)
        run.advance(progress)

    while (waiting or asked or decided) and time.monotonic() < deadline:
        try:
            for case, problem in await actors.instruct(waiting):
                del waiting[case.notification_id]
                if problem:
                    lost(case, f"{case.reference}: {problem}")
                else:
                    asked[case.reference or ""] = case
            for case, problem in await actors.decide(asked):
                del asked[case.reference or ""]
                if problem:
                    lost(case, f"{case.reference}: {problem}")
                else:
                    decided[case.item_id or ""] = case
            for case, problem in await actors.notified(decided):
                del decided[case.item_id or ""]
                if problem:
                    lost(case, problem)
                    continue
                result.delivered += 1
                result.latencies_ms.append((time.monotonic() - case.seeded_at) * 1000)
                run.advance(progress)
        except StepFailed as exc:  # a listing failed: the next pass tries again
            result.problems.append(str(exc))
        if waiting or asked or decided:
            await asyncio.sleep(0.5)
    late = [*waiting.values(), *asked.values(), *decided.values()]
    reasons = await _unprocessed_reasons(actors.urban) if late else {}
    for case in late:
        why = reasons.get(case.notification_id, f"not done within {run.timeout:.0f} s")
        lost(case, f"{case.notification_id}: {case.stage} ({why})")


async def _unprocessed_reasons(urban: httpx.AsyncClient) -> dict[str, str]:
    """Why urban kept notifications aside, by notification id."""
    response = await urban.get("/v1/unprocessed-notifications", params={"limit": 200})
    if response.is_error:
        return {}
    return {
        str((row["data"] or {}).get("notification_id")): row["reason"] for row in response.json()
    }
