"""Belgian identifiers shared by every service: NIS tenant codes, NISS and enterprise numbers,
NOTICe instance codes."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

_DIGITS = re.compile(r"[^0-9]")

#: A commune's NOTICe instance code, as the modelled contract writes it
#: (``contracts/notice/openapi.yaml``, ``InstanceCode``). It is a segment of the listing's
#: path: a code outside it was refused at every poll, seen only as a warning in the log.
NOTICE_INSTANCE_CODE = re.compile(r"[0-9A-Za-z-]{1,40}")


def _digits_only(value: str) -> str:
    """The ASCII digits of ``value``, its punctuation left out. A digit of another script
    is refused: left out as punctuation, "BE ٠403170701" was taken for 0403170701."""
    if any(character.isdigit() and not character.isascii() for character in value):
        raise ValueError("write the number with the digits 0 to 9")
    return _DIGITS.sub("", value)


def check_niss(value: str) -> str:
    """A national number (NISS/INSZ): 11 digits whose last two are a modulo-97 check.

    People born from 2000 on get a check computed over ``"2" + first nine digits``.
    Accepts the usual punctuation (``85.07.30-033.28``) and returns the 11 digits.
    """
    digits = _digits_only(value)
    if len(digits) != 11:
        raise ValueError("a national number (NISS) has 11 digits")
    base, check = int(digits[:9]), int(digits[9:])
    if check == 97 - base % 97:
        century = 1900
    elif check == 97 - int("2" + digits[:9]) % 97:
        century = 2000
    else:
        raise ValueError("this national number (NISS) fails its modulo-97 check")
    _check_birth_date(century + int(digits[:2]), int(digits[2:4]), int(digits[4:6]))
    return digits


def _check_birth_date(year: int, month: int, day: int) -> None:
    """A NISS starts with its holder's birth date. A bis number adds 20 or 40 to the month;
    a month or day of 0 stands for one not known. Anything else is no one's number, though
    its check digits may hold (85994503328: month 99, day 45)."""
    known_month = month % 20
    if month > 52 or month % 20 > 12 or day > 31:
        raise ValueError("this national number (NISS) holds no birth date")
    if known_month and day:
        try:
            date(year, known_month, day)
        except ValueError:
            raise ValueError("this national number (NISS) holds no birth date") from None


def check_enterprise_number(value: str) -> str:
    """An enterprise number (BCE/KBO): 10 digits starting 0 or 1, modulo-97 checked.

    Accepts ``BE 0123.456.749`` and returns the 10 digits.
    """
    digits = _digits_only(value.upper().removeprefix("BE"))
    if len(digits) == 9:  # pre-2005 numbers lose their leading zero
        digits = "0" + digits
    if len(digits) != 10 or digits[0] not in "01":
        raise ValueError("an enterprise number (BCE/KBO) has 10 digits and starts with 0 or 1")
    if 97 - int(digits[:8]) % 97 != int(digits[8:]):
        raise ValueError("this enterprise number (BCE/KBO) fails its modulo-97 check")
    return digits


def mask_niss(digits: str) -> str:
    """Keep the birth date's year and the check digits out of sight: ``85******-**``."""
    return digits[:2] + "*" * 7 + "**" if len(digits) == 11 else "***********"


Niss = Annotated[str, AfterValidator(check_niss)]
EnterpriseNumber = Annotated[str, AfterValidator(check_enterprise_number)]
#: A tenant is a commune or CPAS, named by its 5-digit NIS (INS) code.
TenantCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{5}$")]
