from __future__ import annotations

import logging
import sys

import pytest

from contracts.identifiers import check_enterprise_number, check_niss, mask_niss
from kernel.logs import NationalNumbersMasked, mask_national_numbers


@pytest.mark.parametrize(
    ("given", "digits"),
    [
        ("85073003328", "85073003328"),  # born in the 1900s: check over the first nine digits
        ("85.07.30-033.28", "85073003328"),
        ("00012556777", "00012556777"),  # born from 2000: check over "2" + first nine digits
        ("85270300041", "85270300041"),  # a bis number: month + 20
        ("85000000138", "85000000138"),  # birth month and day not known
    ],
)
def test_valid_national_numbers(given: str, digits: str) -> None:
    assert check_niss(given) == digits


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("85073003329", "modulo-97"),
        ("8507300332", "11 digits"),
        ("", "11 digits"),
        ("85994503328", "no birth date"),  # month 99, day 45: its check digits hold
        ("85023000125", "no birth date"),  # 30 February
        ("85\u0660730033\u0662\u0668", "digits 0 to 9"),  # Arabic-Indic digits
    ],
)
def test_invalid_national_numbers_say_why(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_niss(given)


@pytest.mark.parametrize("given", ["0403.170.701", "BE 0403 170 701", "403170701"])
def test_valid_enterprise_numbers(given: str) -> None:
    assert check_enterprise_number(given) == "0403170701"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("0403170702", "modulo-97"),
        ("2403170701", "starts with 0 or 1"),
        ("12", "10 digits"),
        ("BE \u0660403170701", "digits 0 to 9"),  # taken for 0403170701 when left out
    ],
)
def test_invalid_enterprise_numbers_say_why(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_enterprise_number(given)


def test_masking_keeps_no_more_than_the_birth_year() -> None:
    assert mask_niss("85073003328") == "85*********"
    text = "recipient 85.07.30-033.28 and 85073003328, invoice 12345678901"
    masked = mask_national_numbers(text)
    assert "033" not in masked and masked.count("85*********") == 2
    assert "12345678901" in masked  # not a valid NISS: an ordinary number stays


def test_log_records_are_masked_their_tracebacks_too() -> None:
    formatter = NationalNumbersMasked("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "test", logging.INFO, __file__, 1, "sending to %s", ("85073003328",), None
    )
    assert formatter.format(record) == "INFO sending to 85*********"
    try:
        raise ValueError("UNIQUE constraint failed [parameters: ('850730-033-28', 'Dupont')]")
    except ValueError:
        failed = logging.LogRecord("test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    written = formatter.format(failed)
    assert "033" not in written and "parameters: ('85*********', 'Dupont')" in written


def test_the_masks_cover_the_ways_people_write_a_national_number() -> None:
    for written in ("85073003328", "85.07.30-033.28", "850730-033-28", "85 07 30 033 28"):
        assert mask_national_numbers(f"NISS {written}.") == "NISS 85*********."
