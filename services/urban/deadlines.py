"""The legal deadlines of a permit file, computed from its facts alone (no I/O, no clock).

``deadlines(facts)`` lists every deadline the file has reached so far, each
with its due date and, once met, the date it was met; ``docs/urban-deadlines.md``
gives the rules, the articles they come from and the simplifications made.

Counting (CoDT D.I.16, and the same habit in the environmental permit decree):
the day of the starting act is not counted, the last day is; a last day that
falls on a Saturday, a Sunday or a Belgian legal holiday moves to the next
working day. A public inquiry does not run from 16 July to 15 August nor from
24 December to 1 January; the days it stood still push the decision deadline
back by as many days. The college may extend its decision deadline once by 30
days (CoDT D.IV.46, last paragraph); ``extension_refusal`` says when it may not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from enum import Enum
from functools import cache

from contracts.events.urban import FileType

COMPLETENESS = "completeness"
INQUIRY = "inquiry"
DECISION = "decision"
NOTIFICATION = "notification"
OPINION_PREFIX = "opinion:"

#: The days a public inquiry lasts for a permit or a certificate n°2.
INQUIRY_DAYS = 15

#: Days to check completeness (and send the acknowledgment or the list of missing documents).
COMPLETENESS_DAYS: dict[FileType, int] = {
    "permis_urbanisme": 20,
    "permis_urbanisation": 20,
    "certificat_urbanisme_1": 20,
    "certificat_urbanisme_2": 20,
    "declaration_urbanistique": 20,
    "permis_unique": 20,
    "permis_environnement_1": 20,
    "permis_environnement_2": 20,
    "declaration_classe_3": 15,
}

#: Environmental procedures: one decision deadline, counted from the completeness date.
ENVIRONMENT_DECISION_DAYS: dict[FileType, int] = {
    "permis_environnement_1": 140,
    "permis_environnement_2": 70,
    "permis_unique": 90,
}

#: Decided on the receipt date's clock, whatever the completeness check finds.
FROM_RECEIPT_DECISION_DAYS: dict[FileType, int] = {
    "certificat_urbanisme_1": 30,
    "declaration_classe_3": 15,
}

#: The consulted body whose opinion is the delegated official's (fonctionnaire délégué).
DELEGATED_OFFICIAL = "FD"

#: The procedures counted under CoDT D.IV.46, the only ones whose decision deadline the
#: college may extend.
EXTENDABLE_FILE_TYPES: tuple[FileType, ...] = (
    "permis_urbanisme",
    "permis_urbanisation",
    "certificat_urbanisme_2",
    "declaration_urbanistique",
)
#: The days the college's one extension adds to its decision deadline.
EXTENSION_DAYS = 30


@dataclass(frozen=True)
class OpinionFacts:
    opinion_id: str
    body: str
    #: The due date given when the opinion was asked for; ``opinion_last_day`` is its term.
    due_on: date
    received_on: date | None = None
    #: False once the gateway reported the request undelivered: the body was never asked,
    #: so it has no deadline to meet (the clerk asks it again).
    delivered: bool = True


@dataclass(frozen=True)
class Facts:
    """What the procedure of one file has gone through, as dates."""

    file_type: FileType
    received_on: date
    #: The day the file was found complete (the acknowledgment of receipt was sent).
    complete_on: date | None = None
    #: The day the list of missing documents was sent: it answers the completeness check too.
    missing_asked_on: date | None = None
    #: The day the missing documents came: the completeness check starts over from it.
    complements_received_on: date | None = None
    opinions: tuple[OpinionFacts, ...] = ()
    inquiry_starts_on: date | None = None
    decided_on: date | None = None
    #: The day the decision reached the applicant (for NOTICe files, the SPW's receipt).
    notified_on: date | None = None
    #: The day the college extended its decision deadline (once, by ``EXTENSION_DAYS``).
    decision_extended_on: date | None = None


@dataclass(frozen=True)
class Deadline:
    name: str
    due_on: date
    met_on: date | None = None

    @property
    def open(self) -> bool:
        return self.met_on is None


# -- the calendar ------------------------------------------------------------------------


def easter_sunday(year: int) -> date:
    """Gregorian Easter (the anonymous Gregorian computus, "Meeus/Jones/Butcher")."""
    golden = year % 19
    century, year_of_century = divmod(year, 100)
    leap_century, leap_century_rest = divmod(century, 4)
    correction = (century + 8) // 25
    moon_correction = (century - correction + 1) // 3
    epact = (19 * golden + century - leap_century - moon_correction + 15) % 30
    leap_year, leap_year_rest = divmod(year_of_century, 4)
    weekday = (32 + 2 * leap_century_rest + 2 * leap_year - epact - leap_year_rest) % 7
    shift = (golden + 11 * epact + 22 * weekday) // 451
    month, day = divmod(epact + weekday - 7 * shift + 114, 31)
    return date(year, month, day + 1)


@cache
def belgian_holidays(year: int) -> frozenset[date]:
    """The ten legal holidays (law of 4 January 1974 and its royal decree)."""
    easter = easter_sunday(year)
    return frozenset(
        {
            date(year, 1, 1),
            easter + timedelta(days=1),  # Easter Monday
            date(year, 5, 1),
            easter + timedelta(days=39),  # Ascension
            easter + timedelta(days=50),  # Whit Monday
            date(year, 7, 21),
            date(year, 8, 15),
            date(year, 11, 1),
            date(year, 11, 11),
            date(year, 12, 25),
        }
    )


def is_working_day(day: date) -> bool:
    return day.weekday() < 5 and day not in belgian_holidays(day.year)


def last_day(start: date, days: int) -> date:
    """``days`` after ``start`` (not counted), moved to the next working day if need be."""
    due = start + timedelta(days=days)
    while not is_working_day(due):
        due += timedelta(days=1)
    return due


def opinion_last_day(due_on: date) -> date:
    """The last day a body may give its opinion: its due date, moved to the next working day
    like every other term (CoDT D.I.16); only after it is the opinion deemed favourable."""
    return last_day(due_on, 0)


def inquiry_suspended(day: date) -> bool:
    """16 July to 15 August and 24 December to 1 January, both included."""
    month_day = (day.month, day.day)
    return (7, 16) <= month_day <= (8, 15) or month_day >= (12, 24) or month_day <= (1, 1)


def inquiry_end(starts_on: date, days: int = INQUIRY_DAYS) -> tuple[date, int]:
    """The inquiry's last day and how many suspended days it stood still.

    The start day counts as the first day of the inquiry, as the notice posted
    on the site announces it ("du … au …"); suspended days do not count.
    """
    counted, suspended, day = 0, 0, starts_on - timedelta(days=1)
    while counted < days:
        day += timedelta(days=1)
        if inquiry_suspended(day):
            suspended += 1
        else:
            counted += 1
    # The last day moves to a working day, and past a suspension it reaches (an inquiry
    # whose 15th day is 23 December ends on 2 January, 9 days later, not on 26 December).
    while not is_working_day(day) or inquiry_suspended(day):
        day += timedelta(days=1)
        if inquiry_suspended(day):
            suspended += 1
    return day, suspended


# -- the rules ----------------------------------------------------------------------------


def decision_days(facts: Facts) -> int:
    """How many days the college has to decide (and send its decision)."""
    if facts.file_type in FROM_RECEIPT_DECISION_DAYS:
        return FROM_RECEIPT_DECISION_DAYS[facts.file_type]
    if facts.file_type in ENVIRONMENT_DECISION_DAYS:
        return ENVIRONMENT_DECISION_DAYS[facts.file_type]
    bodies = {opinion.body.upper() for opinion in facts.opinions}
    if DELEGATED_OFFICIAL in bodies:
        return 115
    if bodies or facts.inquiry_starts_on is not None:
        return 75
    return 30


def deadlines(facts: Facts) -> list[Deadline]:
    """Every deadline the file has reached so far, in the order the procedure meets them."""
    found = [Deadline(COMPLETENESS, _check_due(facts), facts.complete_on or facts.missing_asked_on)]
    asked_of: Counter[str] = Counter()
    for opinion in facts.opinions:
        # A body asked twice has two deadlines: "opinion:SRI", then "opinion:SRI (2)".
        asked_of[opinion.body.upper()] += 1
        times = asked_of[opinion.body.upper()]
        name = OPINION_PREFIX + opinion.body + (f" ({times})" if times > 1 else "")
        if opinion.delivered or opinion.received_on is not None:
            found.append(Deadline(name, opinion_last_day(opinion.due_on), opinion.received_on))
    suspended = 0
    if facts.inquiry_starts_on is not None:
        end, suspended = inquiry_end(facts.inquiry_starts_on)
        # Shown, never warned about: the inquiry's end is a date of the procedure, not a duty.
        found.append(Deadline(INQUIRY, end, met_on=end))
    decision_due = _decision_due(facts, suspended)
    if decision_due is not None:
        found.append(Deadline(DECISION, decision_due, facts.decided_on))
        if facts.decided_on is not None:
            # The deadline is the date the decision is *sent*: a late decision is due at once.
            found.append(
                Deadline(NOTIFICATION, max(decision_due, facts.decided_on), facts.notified_on)
            )
    return found


def decision_clock_start(facts: Facts) -> tuple[date | None, bool]:
    """The day the decision's days count from, and whether the file is deemed complete.

    The acknowledgment's day; but a CoDT procedure whose completeness check went
    unanswered in its days (neither the acknowledgment nor the list of missing
    documents sent by its last day) is deemed complete on that last day (CoDT
    D.IV.33†): an acknowledgment sent later, or never, does not push the decision
    back. None while a list of missing documents sent in time holds the clock.
    """
    if facts.file_type in FROM_RECEIPT_DECISION_DAYS:
        return facts.received_on, False
    check_due = _check_due(facts)
    answered = [day for day in (facts.complete_on, facts.missing_asked_on) if day is not None]
    if facts.file_type in EXTENDABLE_FILE_TYPES and not any(d <= check_due for d in answered):
        return check_due, True
    return facts.complete_on, False


def _check_due(facts: Facts) -> date:
    """The completeness check's last day: counted from the receipt, or from the complements
    when the file was found incomplete and completed since."""
    start = facts.complements_received_on or facts.received_on
    return last_day(start, COMPLETENESS_DAYS[facts.file_type])


def _decision_due(facts: Facts, suspended: int) -> date | None:
    start, _ = decision_clock_start(facts)
    if start is None:
        return None  # the list of missing documents went out in time: the clock waits
    # The extension lengthens the count itself ("145 days" for a 115-day file): only the
    # new last day moves to a working day, not the old one before the 30 days are added.
    extension = EXTENSION_DAYS if facts.decision_extended_on is not None else 0
    return last_day(start, decision_days(facts) + suspended + extension)


class ExtensionRefusal(Enum):
    """Why the college may not extend its decision deadline (CoDT D.IV.46, last paragraph)."""

    NOT_EXTENDABLE = "the procedure is not one of CoDT D.IV.46"
    ALREADY_EXTENDED = "the deadline was extended once already"
    DECIDED = "the file is decided"
    NOT_STARTED = "the decision clock has not started"
    TOO_LATE = "the decision deadline has passed"


def extension_refusal(facts: Facts, day: date) -> ExtensionRefusal | None:
    """Why the college may not extend the decision deadline on ``day``; None when it may.

    The extension must be decided (and sent) before the deadline ends, so its last
    day still allows it; a deadline that has not started cannot be extended (Council
    of State, n° 242.424, 25 September 2018).
    """
    if facts.file_type not in EXTENDABLE_FILE_TYPES:
        return ExtensionRefusal.NOT_EXTENDABLE
    if facts.decision_extended_on is not None:
        return ExtensionRefusal.ALREADY_EXTENDED
    if facts.decided_on is not None:
        return ExtensionRefusal.DECIDED
    due = next((found.due_on for found in deadlines(facts) if found.name == DECISION), None)
    start, deemed = decision_clock_start(facts)
    if due is None or (deemed and start is not None and day <= start):
        return ExtensionRefusal.NOT_STARTED  # not yet deemed complete either
    if day > due:
        return ExtensionRefusal.TOO_LATE
    return None


def next_open(found: list[Deadline]) -> Deadline | None:
    """The open deadline that falls first (the file's ``next_deadline_on``)."""
    open_ones = [deadline for deadline in found if deadline.open]
    return min(open_ones, key=lambda deadline: deadline.due_on, default=None)


#: The warnings emitted for a file: (deadline, level) → the due date they announced.
SentWarnings = Mapping[tuple[str, str], date]


def _sent(already: SentWarnings, deadline: Deadline, level: str) -> bool:
    """Whether this warning was emitted for the deadline's current due date: one whose
    date moved since (an opinion asked, completeness checked again) is warned again."""
    return already.get((deadline.name, level)) == deadline.due_on


def warnings_due(
    found: list[Deadline], today: date, warn_days: int, already: SentWarnings
) -> list[tuple[Deadline, str]]:
    """The warnings to emit today: ``approaching`` within ``warn_days``, ``exceeded`` after.

    ``already`` holds the warnings emitted before: each (deadline, level) is emitted
    once for each due date. A deadline already exceeded is not also announced as
    approaching.
    """
    due: list[tuple[Deadline, str]] = []
    for deadline in found:
        if not deadline.open:
            continue
        level = (
            "exceeded"
            if today > deadline.due_on
            else "approaching"
            if today >= deadline.due_on - timedelta(days=warn_days)
            else None
        )
        if level is not None and not _sent(already, deadline, level):
            due.append((deadline, level))
    return due


def next_warning_on(
    found: list[Deadline], today: date, warn_days: int, already: SentWarnings
) -> date | None:
    """The first day on which ``warnings_due`` will have something new (the watcher's index)."""
    days: list[date] = []
    for deadline in found:
        if not deadline.open:
            continue
        if not _sent(already, deadline, "approaching") and today <= deadline.due_on:
            days.append(deadline.due_on - timedelta(days=warn_days))
        if not _sent(already, deadline, "exceeded"):
            days.append(deadline.due_on + timedelta(days=1))
    return min(days, default=None)
