"""What every e-Box connector checks of an outgoing mail before sending it.

A letter that is not what its event says, or a recipient whose number fails
its check, can never be delivered: these are permanent failures whose
reasons are written for the clerk who sent the mail.
"""

from __future__ import annotations

import binascii
import hashlib
import re

import pybase64

from contracts.events.courrier import OutgoingMailSendRequested
from contracts.identifiers import check_enterprise_number, check_niss
from gateway.errors import PermanentDeliveryError

PDF_MAGIC = b"%PDF-"


def letter_of(mail: OutgoingMailSendRequested) -> bytes:
    """The PDF, checked against its MD5 and its magic bytes."""
    try:
        letter = pybase64.b64decode(mail.body_pdf_base64, validate=True)
    except binascii.Error as exc:
        raise PermanentDeliveryError("The letter's PDF is not valid base64.") from exc
    if hashlib.md5(letter, usedforsecurity=False).hexdigest() != mail.body_pdf_md5:
        raise PermanentDeliveryError("The letter's PDF does not match its MD5 checksum.")
    if not letter.startswith(PDF_MAGIC):
        raise PermanentDeliveryError("The letter is not a PDF document.")
    return letter


def recipient_number(mail: OutgoingMailSendRequested) -> str:
    """The recipient's NISS (11 digits) or enterprise number (10 digits), checked."""
    recipient = mail.recipient
    try:
        if recipient.kind == "person":
            return check_niss(recipient.identifier)
        return check_enterprise_number(recipient.identifier)
    except ValueError as exc:
        raise PermanentDeliveryError(f"The recipient's identifier is wrong: {exc}.") from exc


def letter_file_name(mail: OutgoingMailSendRequested, max_length: int = 80) -> str:
    """The registration number (``S2026/000123``) made file-safe: ``S2026-000123.pdf``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", mail.registration_number).strip("-.") or "letter"
    return stem[: max_length - 4] + ".pdf"
