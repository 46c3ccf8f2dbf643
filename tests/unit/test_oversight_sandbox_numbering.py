"""The simulated oversight never numbers back: its clients remember what it forgets on restart."""

from __future__ import annotations

import asyncio

from sandbox.oversight import Behaviour, DecidedOutcome, OversightOffice

TENANT = "92137"


async def decided(office: OversightOffice, item_id: str) -> DecidedOutcome:
    office.schedule(TENANT, office.acknowledgement_number(), item_id, "COL/2026/0001")
    await asyncio.sleep(0.01)  # the office decides at once (delay 0), on the loop's next turn
    [outcome] = [outcome for outcome in office.outcomes if outcome.item_id == item_id]
    return outcome


async def test_a_restarted_or_cleared_office_lists_after_the_cursor_its_clients_recorded() -> None:
    first = OversightOffice(Behaviour(delay_seconds=0))
    before = [await decided(first, f"item-{n}") for n in range(3)]
    await asyncio.sleep(0.002)

    restarted = OversightOffice(Behaviour(delay_seconds=0))
    after = await decided(restarted, "item-after-restart")

    # The gateway resumes after the last cursor it recorded and keys outcomes by number.
    assert restarted.after(TENANT, before[-1].cursor, 100) == [after]
    assert after.acknowledgement_number not in {o.acknowledgement_number for o in before}

    restarted.clear()  # the control surface's reset, which also resets the behaviour
    restarted.behaviour = Behaviour(delay_seconds=0)
    again = await decided(restarted, "item-after-clear")
    assert again.cursor > after.cursor
    assert again.acknowledgement_number != after.acknowledgement_number
