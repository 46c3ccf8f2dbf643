"""The legal deadlines of permit files (services/urban/deadlines.py): pure, no clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pytest

from contracts.events.urban import FileType
from services.urban.deadlines import (
    COMPLETENESS,
    DECISION,
    INQUIRY,
    NOTIFICATION,
    Deadline,
    ExtensionRefusal,
    Facts,
    OpinionFacts,
    belgian_holidays,
    deadlines,
    easter_sunday,
    extension_refusal,
    inquiry_end,
    last_day,
    next_open,
    next_warning_on,
    warnings_due,
)


def by_name(facts: Facts) -> dict[str, Deadline]:
    return {deadline.name: deadline for deadline in deadlines(facts)}


# -- the calendar ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("year", "easter"),
    [
        (2024, date(2024, 3, 31)),
        (2025, date(2025, 4, 20)),
        (2026, date(2026, 4, 5)),
        (2019, date(2019, 4, 21)),
        (2038, date(2038, 4, 25)),
    ],
)
def test_easter_sunday(year: int, easter: date) -> None:
    assert easter_sunday(year) == easter


def test_the_ten_belgian_legal_holidays_of_2026() -> None:
    assert sorted(belgian_holidays(2026)) == [
        date(2026, 1, 1),
        date(2026, 4, 6),  # Easter Monday
        date(2026, 5, 1),
        date(2026, 5, 14),  # Ascension
        date(2026, 5, 25),  # Whit Monday
        date(2026, 7, 21),
        date(2026, 8, 15),
        date(2026, 11, 1),
        date(2026, 11, 11),
        date(2026, 12, 25),
    ]


def test_the_start_day_does_not_count_and_a_closed_last_day_moves_to_the_next_working_day() -> None:
    assert last_day(date(2026, 3, 2), 20) == date(2026, 3, 23)  # Monday + 20 = Sunday 22 → 23
    assert last_day(date(2026, 3, 3), 20) == date(2026, 3, 23)  # a Monday: stays
    assert last_day(date(2026, 4, 26), 10) == date(2026, 5, 6)  # a Wednesday
    assert last_day(date(2026, 4, 21), 10) == date(2026, 5, 4)  # 1 May (Fri) + weekend → Mon 4


# -- completeness and decision ---------------------------------------------------------------


def test_completeness_is_due_20_days_after_receipt_and_met_by_the_answer() -> None:
    facts = Facts("permis_urbanisme", received_on=date(2026, 2, 2))
    found = by_name(facts)
    assert found[COMPLETENESS] == Deadline(COMPLETENESS, date(2026, 2, 23), None)
    answered = Facts("permis_urbanisme", date(2026, 2, 2), missing_asked_on=date(2026, 2, 10))
    assert by_name(answered)[COMPLETENESS].met_on == date(2026, 2, 10)
    assert DECISION not in by_name(answered)  # the missing documents hold the clock


def test_a_completeness_check_unanswered_in_its_days_starts_the_decision_clock_anyway() -> None:
    check_due = date(2026, 2, 23)
    # Deemed complete on the check's last day (CoDT D.IV.33): the decision is due 30 days
    # later whether the acknowledgment goes out late or never.
    for late in (None, date(2026, 3, 20)):
        facts = Facts("permis_urbanisme", date(2026, 2, 2), complete_on=late)
        assert by_name(facts)[DECISION].due_on == last_day(check_due, 30)
    in_time = Facts("permis_urbanisme", date(2026, 2, 2), complete_on=date(2026, 2, 16))
    assert by_name(in_time)[DECISION].due_on == last_day(date(2026, 2, 16), 30)
    # A list of missing documents sent late does not hold the clock either.
    late_list = Facts("permis_urbanisme", date(2026, 2, 2), missing_asked_on=date(2026, 3, 2))
    assert by_name(late_list)[DECISION].due_on == last_day(check_due, 30)
    # The environmental permit decree's own completeness rule is not this one.
    environment = Facts("permis_environnement_2", date(2026, 2, 2))
    assert DECISION not in by_name(environment)


@pytest.mark.parametrize(
    ("opinions", "inquiry", "days"),
    [
        ((), None, 30),
        ((OpinionFacts("o1", "SRI", date(2026, 4, 1)),), None, 75),
        ((), date(2026, 3, 2), 75),
        ((OpinionFacts("o1", "SRI", date(2026, 4, 1)),), date(2026, 3, 2), 75),
        ((OpinionFacts("o2", "FD", date(2026, 4, 1)),), None, 115),
    ],
)
def test_a_permit_is_decided_in_30_75_or_115_days_by_opinions_and_inquiry(
    opinions: tuple[OpinionFacts, ...], inquiry: date | None, days: int
) -> None:
    complete_on = date(2026, 3, 2)
    facts = Facts(
        "permis_urbanisme",
        received_on=date(2026, 2, 20),
        complete_on=complete_on,
        opinions=opinions,
        inquiry_starts_on=inquiry,
    )
    # No inquiry here crosses a suspension: the deadline is the plain count.
    assert by_name(facts)[DECISION].due_on == last_day(complete_on, days)


@pytest.mark.parametrize(
    ("file_type", "days"),
    [("permis_environnement_1", 140), ("permis_environnement_2", 70), ("permis_unique", 90)],
)
def test_environmental_permits_have_their_decree_deadlines(file_type: str, days: int) -> None:
    facts = Facts(file_type, date(2026, 2, 2), complete_on=date(2026, 2, 16))  # type: ignore[arg-type]
    assert by_name(facts)[DECISION].due_on == last_day(date(2026, 2, 16), days)


def test_a_certificate_n1_is_due_30_days_after_receipt_whatever_the_check() -> None:
    facts = Facts("certificat_urbanisme_1", received_on=date(2026, 2, 2))
    assert by_name(facts)[DECISION].due_on == date(2026, 3, 4)


def test_a_class_3_declaration_has_15_days() -> None:
    found = by_name(Facts("declaration_classe_3", received_on=date(2026, 2, 2)))
    assert found[COMPLETENESS].due_on == date(2026, 2, 17)
    assert found[DECISION].due_on == date(2026, 2, 17)


# -- public inquiries and their suspensions ----------------------------------------------------


def test_an_inquiry_outside_the_suspensions_lasts_15_days() -> None:
    assert inquiry_end(date(2026, 3, 2)) == (date(2026, 3, 16), 0)


def test_an_inquiry_stands_still_from_16_july_to_15_august() -> None:
    # 10 July-15 July counts 6 days; 16 July-15 August (31 days) stands still; 9 more from
    # 16 August: the 24th is a Monday.
    assert inquiry_end(date(2026, 7, 10)) == (date(2026, 8, 24), 31)


def test_an_inquiry_stands_still_from_24_december_to_1_january() -> None:
    # 15-23 December counts 9 days; 24 December-1 January (9 days) stands still; 6 more
    # from 2 January: 7 January 2027 is a Thursday.
    assert inquiry_end(date(2026, 12, 15)) == (date(2027, 1, 7), 9)


def test_an_inquiry_whose_last_day_falls_before_a_suspension_ends_after_it() -> None:
    # 9-23 December 2028 counts the 15 days; the 23rd is a Saturday, the next working day
    # would be 26 December, but the inquiry stands still until 1 January: 2 January 2029
    # (a Tuesday), the 9 suspended days counted.
    assert inquiry_end(date(2028, 12, 9)) == (date(2029, 1, 2), 9)
    # 1-15 July 2029 counts them; the 15th is a Sunday, and 16 July-15 August stands still.
    assert inquiry_end(date(2029, 7, 1)) == (date(2029, 8, 16), 31)


def test_the_suspended_days_push_the_decision_back() -> None:
    complete_on = date(2026, 7, 1)
    facts = Facts(
        "permis_urbanisme",
        received_on=date(2026, 6, 20),
        complete_on=complete_on,
        inquiry_starts_on=date(2026, 7, 10),
    )
    found = by_name(facts)
    assert found[DECISION].due_on == last_day(complete_on, 75 + 31)
    assert found[INQUIRY] == Deadline(INQUIRY, date(2026, 8, 24), date(2026, 8, 24))


def test_the_notification_is_due_with_the_decision_and_at_once_when_decided_late() -> None:
    base = Facts("permis_urbanisme", date(2026, 2, 2), complete_on=date(2026, 2, 16))
    due = by_name(base)[DECISION].due_on
    on_time = by_name(Facts(**{**base.__dict__, "decided_on": date(2026, 3, 5)}))
    assert on_time[DECISION].met_on == date(2026, 3, 5)
    assert on_time[NOTIFICATION] == Deadline(NOTIFICATION, due, None)
    late = by_name(Facts(**{**base.__dict__, "decided_on": date(2026, 4, 1)}))
    assert late[NOTIFICATION].due_on == date(2026, 4, 1)
    notified = Facts(
        **{**base.__dict__, "decided_on": date(2026, 3, 5), "notified_on": date(2026, 3, 6)}
    )
    assert next_open(deadlines(notified)) is None


def test_opinions_are_deadlines_until_they_are_in() -> None:
    facts = Facts(
        "permis_urbanisme",
        date(2026, 2, 2),
        complete_on=date(2026, 2, 16),
        opinions=(
            OpinionFacts("o1", "SRI", date(2026, 3, 18), received_on=date(2026, 3, 1)),
            OpinionFacts("o2", "DNF", date(2026, 3, 20)),
        ),
    )
    found = by_name(facts)
    assert found["opinion:SRI"].met_on == date(2026, 3, 1)
    assert next_open(deadlines(facts)) == Deadline("opinion:DNF", date(2026, 3, 20))


def test_an_opinion_due_on_a_closed_day_runs_to_the_next_working_day() -> None:
    # Saturday 26 December 2026, the day after Christmas: the body has until Monday 28.
    facts = Facts(
        "permis_urbanisme",
        date(2026, 12, 1),
        complete_on=date(2026, 12, 7),
        opinions=(OpinionFacts("o1", "SRI", date(2026, 12, 26)),),
    )
    found = [d for d in deadlines(facts) if d.name == "opinion:SRI"]
    assert found == [Deadline("opinion:SRI", date(2026, 12, 28))]
    assert [level for _, level in warnings_due(found, date(2026, 12, 27), 5, {})] == ["approaching"]
    assert [level for _, level in warnings_due(found, date(2026, 12, 29), 5, {})] == ["exceeded"]


def test_an_opinion_request_never_delivered_is_no_deadline_of_the_body() -> None:
    facts = Facts(
        "permis_urbanisme",
        date(2026, 2, 2),
        complete_on=date(2026, 2, 16),
        opinions=(
            OpinionFacts("o1", "SRI", date(2026, 3, 18), delivered=False),
            OpinionFacts("o2", "SRI", date(2026, 3, 25)),  # asked again
        ),
    )
    found = by_name(facts)
    # The one asked again keeps its number: warnings already sent under it still match.
    assert [name for name in found if name.startswith("opinion:")] == ["opinion:SRI (2)"]
    assert next_open(deadlines(facts)) == Deadline("opinion:SRI (2)", date(2026, 3, 25))


# -- the college's extension of the decision deadline ------------------------------------------


def test_the_extension_adds_30_days_and_moves_the_new_last_day_to_a_working_day() -> None:
    facts = Facts("permis_urbanisme", date(2026, 2, 20), complete_on=date(2026, 3, 2))
    assert by_name(facts)[DECISION].due_on == date(2026, 4, 1)
    extended = replace(facts, decision_extended_on=date(2026, 3, 20))
    # 60 days after 2 March is Friday 1 May, a legal holiday: Monday 4 May.
    assert by_name(extended)[DECISION] == Deadline(DECISION, date(2026, 5, 4), None)


def test_the_30_days_lengthen_the_count_not_the_last_day_already_moved() -> None:
    facts = Facts("permis_urbanisme", date(2026, 2, 20), complete_on=date(2026, 3, 5))
    # 30 days: Saturday 4 April, then Easter Monday: Tuesday 7 April.
    assert by_name(facts)[DECISION].due_on == date(2026, 4, 7)
    extended = replace(facts, decision_extended_on=date(2026, 4, 7))
    # 60 days: Monday 4 May, not 7 April + 30 = 7 May.
    assert by_name(extended)[DECISION].due_on == date(2026, 5, 4)


def test_the_extension_adds_to_the_days_an_inquiry_stood_still() -> None:
    facts = Facts(
        "permis_urbanisme",
        date(2026, 6, 20),
        complete_on=date(2026, 7, 1),
        inquiry_starts_on=date(2026, 7, 10),
        decision_extended_on=date(2026, 9, 1),
    )
    assert by_name(facts)[DECISION].due_on == last_day(date(2026, 7, 1), 75 + 31 + 30)


def test_a_decision_after_the_extension_is_notified_by_the_extended_deadline() -> None:
    facts = Facts(
        "permis_urbanisme",
        date(2026, 2, 20),
        complete_on=date(2026, 3, 2),
        decision_extended_on=date(2026, 3, 30),
        decided_on=date(2026, 4, 20),
    )
    found = by_name(facts)
    assert found[DECISION].met_on == date(2026, 4, 20)
    assert found[NOTIFICATION].due_on == date(2026, 5, 4)


COMPLETE = Facts("permis_urbanisme", date(2026, 2, 20), complete_on=date(2026, 3, 2))  # due 1 April


@pytest.mark.parametrize(
    "file_type",
    [
        "permis_urbanisme",
        "permis_urbanisation",
        "certificat_urbanisme_2",
        "declaration_urbanistique",
    ],
)
def test_the_procedures_of_d_iv_46_may_be_extended_until_their_last_day(
    file_type: FileType,
) -> None:
    facts = replace(COMPLETE, file_type=file_type)
    assert extension_refusal(facts, date(2026, 3, 3)) is None
    assert extension_refusal(facts, date(2026, 4, 1)) is None
    assert extension_refusal(facts, date(2026, 4, 2)) is ExtensionRefusal.TOO_LATE


@pytest.mark.parametrize(
    "file_type",
    [
        "certificat_urbanisme_1",
        "permis_unique",
        "permis_environnement_1",
        "permis_environnement_2",
        "declaration_classe_3",
    ],
)
def test_other_procedures_may_not_be_extended(file_type: FileType) -> None:
    facts = replace(COMPLETE, file_type=file_type)
    assert extension_refusal(facts, date(2026, 3, 3)) is ExtensionRefusal.NOT_EXTENDABLE


@pytest.mark.parametrize(
    ("facts", "refusal"),
    [
        (
            replace(COMPLETE, decision_extended_on=date(2026, 3, 10)),
            ExtensionRefusal.ALREADY_EXTENDED,
        ),
        (replace(COMPLETE, decided_on=date(2026, 3, 10)), ExtensionRefusal.DECIDED),
        # Neither acknowledged nor yet deemed complete (its check's days run to 30 March).
        (
            replace(COMPLETE, received_on=date(2026, 3, 10), complete_on=None),
            ExtensionRefusal.NOT_STARTED,
        ),
        (
            replace(COMPLETE, complete_on=None, missing_asked_on=date(2026, 3, 2)),
            ExtensionRefusal.NOT_STARTED,
        ),
    ],
)
def test_the_extension_is_refused_once_extended_once_decided_or_before_the_clock_starts(
    facts: Facts, refusal: ExtensionRefusal
) -> None:
    assert extension_refusal(facts, date(2026, 3, 20)) is refusal


def test_the_last_day_allowing_the_extension_is_the_one_an_inquiry_pushed_back() -> None:
    facts = Facts(
        "permis_urbanisme",
        date(2026, 6, 20),
        complete_on=date(2026, 7, 1),
        inquiry_starts_on=date(2026, 7, 10),
    )
    due = last_day(date(2026, 7, 1), 75 + 31)
    assert extension_refusal(facts, due) is None
    assert extension_refusal(facts, due + timedelta(days=1)) is ExtensionRefusal.TOO_LATE


# -- warnings -------------------------------------------------------------------------------


#: A file whose only deadline is its completeness check (due 23 February): no CoDT
#: procedure, so no decision clock started by an unanswered check.
ONLY_COMPLETENESS = Facts("permis_environnement_2", received_on=date(2026, 2, 2))


def test_warnings_come_once_per_deadline_and_level() -> None:
    found = deadlines(ONLY_COMPLETENESS)
    assert warnings_due(found, date(2026, 2, 17), 5, {}) == []
    assert next_warning_on(found, date(2026, 2, 17), 5, {}) == date(2026, 2, 18)
    [(deadline, level)] = warnings_due(found, date(2026, 2, 18), 5, {})
    assert (deadline.name, level) == (COMPLETENESS, "approaching")
    sent = {(COMPLETENESS, "approaching"): date(2026, 2, 23)}
    assert warnings_due(found, date(2026, 2, 23), 5, sent) == []
    assert next_warning_on(found, date(2026, 2, 18), 5, sent) == date(2026, 2, 24)
    [(_, level)] = warnings_due(found, date(2026, 2, 24), 5, sent)
    assert level == "exceeded"
    sent[(COMPLETENESS, "exceeded")] = date(2026, 2, 23)
    assert next_warning_on(found, date(2026, 2, 24), 5, sent) is None


def test_a_deadline_whose_due_date_moved_is_warned_again_for_the_new_date() -> None:
    # "approaching" went out for a decision due 9 April; an opinion asked since moved it.
    complete = Facts("permis_urbanisme", date(2026, 2, 2), complete_on=date(2026, 3, 10))
    [before] = [d for d in deadlines(complete) if d.name == DECISION]
    sent = {(DECISION, "approaching"): before.due_on}
    assert warnings_due([before], before.due_on, 5, sent) == []
    asked = replace(
        complete, opinions=(OpinionFacts("o-1", "SRI", date(2026, 4, 20)),)
    )  # 75 days now
    [after] = [d for d in deadlines(asked) if d.name == DECISION]
    assert after.due_on > before.due_on
    assert next_warning_on([after], before.due_on, 5, sent) == after.due_on - timedelta(days=5)
    [(deadline, level)] = warnings_due([after], after.due_on - timedelta(days=5), 5, sent)
    assert (deadline.due_on, level) == (after.due_on, "approaching")


def test_a_body_asked_twice_has_two_deadlines_each_warned() -> None:
    facts = Facts(
        "permis_urbanisme",
        date(2026, 2, 2),
        complete_on=date(2026, 2, 10),
        opinions=(
            OpinionFacts("o-1", "SRI", date(2026, 3, 12)),
            OpinionFacts("o-2", "sri", date(2026, 3, 12)),
            OpinionFacts("o-3", "CCATM", date(2026, 3, 12)),
        ),
    )
    found = [d for d in deadlines(facts) if d.name.startswith("opinion:")]
    assert [d.name for d in found] == ["opinion:SRI", "opinion:sri (2)", "opinion:CCATM"]
    due = warnings_due(found, date(2026, 3, 13), 5, {})
    assert [(d.name, level) for d, level in due] == [(d.name, "exceeded") for d in found]


def test_a_deadline_first_seen_exceeded_is_not_also_announced_approaching() -> None:
    found = deadlines(ONLY_COMPLETENESS)
    [(_, level)] = warnings_due(found, date(2026, 3, 10), 5, {})
    assert level == "exceeded"
    sent = {(COMPLETENESS, "exceeded"): date(2026, 2, 23)}
    assert next_warning_on(found, date(2026, 3, 10), 5, sent) is None


def test_met_deadlines_give_no_warning() -> None:
    facts = Facts("permis_urbanisme", date(2026, 2, 2), complete_on=date(2026, 2, 3))
    found = deadlines(facts)
    assert [d.name for d, _ in warnings_due(found, date(2026, 3, 20), 5, {})] == [DECISION]
