"""Belgian identifiers shared by every service: NIS tenant codes, NISS and enterprise numbers."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

_DIGITS = re.compile(r"[^0-9]")


def _digits_only(value: str) -> str:
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
    if check not in (97 - base % 97, 97 - int("2" + digits[:9]) % 97):
        raise ValueError("this national number (NISS) fails its modulo-97 check")
    return digits


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
