"""Why an invoice is refused, in words a clerk and a supplier understand.

A rule id (``BR-CO-15``) and the official message ("Invoice total amount with
VAT (BT-112) = Invoice total amount without VAT (BT-109) + …") tell a
specialist what broke; the person reading the rejection in the commune or at
the supplier needs to know what is wrong with *this* invoice and what to do.
Each reason therefore carries a short plain explanation (per rule, or per rule
family), the rule id, and the status reason code of the Peppol Invoice Response
(OPStatusReason) that tells the supplier's software which part was wrong.
Rules without an explanation fall back to their official message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.factures.rules.engine import Finding

#: OPStatusReason codes of BIS Invoice Response 3.0.
STATUS_REASON_CODES = frozenset(
    {
        "NON",
        "REF",
        "LEG",
        "REC",
        "QUA",
        "DEL",
        "PRI",
        "QTY",
        "ITM",
        "PAY",
        "UNR",
        "FIN",
        "PPD",
        "OTH",
    }
)
#: PPD (partially paid) goes only with status PD (PEPPOL-T111-R005, fatal): a UQ carrying
#: it was refused by the supplier's access point, so the clerk's question never arrived.
PAYMENT_ONLY_REASON_CODE = "PPD"
#: The codes a clerk may give a dispute (UQ).
DISPUTE_REASON_CODES = STATUS_REASON_CODES - {PAYMENT_ONLY_REASON_CODE}


@dataclass(frozen=True)
class Reason:
    """One reason for a rejection: the status reason code, the text, and its rule (if any)."""

    code: str
    text: str
    rule: str | None = None


# Plain explanations of single rules, the most common refusals first.
_RULES: dict[str, tuple[str, str]] = {
    "BR-CO-10": ("PRI", "The sum of the line amounts does not match the invoice's line total."),
    "BR-CO-11": ("PRI", "The sum of the document allowances does not match their total."),
    "BR-CO-12": ("PRI", "The sum of the document charges does not match their total."),
    "BR-CO-13": (
        "PRI",
        "The total without VAT is not the line total minus allowances plus charges.",
    ),
    "BR-CO-14": ("PRI", "The total VAT is not the sum of the VAT amounts per VAT rate."),
    "BR-CO-15": ("PRI", "The total with VAT is not the total without VAT plus the VAT."),
    "BR-CO-16": (
        "PRI",
        "The amount due is not the total with VAT minus the prepaid amount plus the rounding.",
    ),
    "BR-CO-17": ("PRI", "A VAT amount is not its taxable amount times its VAT rate."),
    "BR-CO-18": ("LEG", "The invoice has no VAT breakdown."),
    "BR-CO-25": (
        "PAY",
        "The amount due is positive but neither a due date nor payment terms are given.",
    ),
    "BR-CL-17": (
        "LEG",
        "A VAT category is unknown: use one of the official codes (S, Z, E, AE, K, G, O, L, M).",
    ),
    "BR-CL-18": (
        "LEG",
        "A VAT category is unknown: use one of the official codes (S, Z, E, AE, K, G, O, L, M).",
    ),
    "BR-CL-03": ("FIN", "The currency code is not an ISO 4217 code."),
    "BR-CL-04": ("FIN", "The currency code is not an ISO 4217 code."),
    "BR-CL-16": ("PAY", "The payment means code is unknown."),
    "BR-CL-23": ("QTY", "A unit of measure is not a UN/ECE Recommendation 20 code."),
    "PEPPOL-EN16931-R003": (
        "REF",
        "Neither a buyer reference nor an order reference is given, so the commune cannot "
        "tell which service ordered this. Ask the supplier for the reference the commune "
        "gave when ordering.",
    ),
    "PEPPOL-EN16931-R010": ("REC", "The buyer's Peppol address (electronic address) is missing."),
    "PEPPOL-EN16931-R020": ("LEG", "The seller's Peppol address (electronic address) is missing."),
    "BR-16": ("ITM", "The invoice has no lines."),
    "BR-61": ("PAY", "A credit transfer is requested but no account number (IBAN) is given."),
    "UBL-XSD": ("UNR", "The document does not follow the UBL 2.1 structure."),
}

# Families of rules, by id prefix; the longest matching prefix wins.
_FAMILIES: dict[str, tuple[str, str]] = {
    "BR-CO-": ("LEG", "Amounts or related information of the invoice are inconsistent."),
    "BR-DEC-": ("PRI", "An amount has more than two decimals."),
    "BR-CL-": ("LEG", "A code is not in its official code list."),
    "BR-S-": ("LEG", "The VAT information of the standard rate (S) is inconsistent."),
    "BR-Z-": ("LEG", "The VAT information of the zero rate (Z) is inconsistent."),
    "BR-E-": ("LEG", "The VAT information of an exemption (E) is inconsistent."),
    "BR-AE-": ("LEG", "The VAT information of reverse charge (AE) is inconsistent."),
    "BR-K-": ("LEG", "The VAT information of an intra-community supply (K) is inconsistent."),
    "BR-G-": ("LEG", "The VAT information of an export outside the EU (G) is inconsistent."),
    "BR-O-": (
        "LEG",
        "The VAT information of a supply outside the scope of VAT (O) is inconsistent.",
    ),
    "BR-IC-": ("LEG", "The VAT information of the Canary Islands tax (L) is inconsistent."),
    "BR-IG-": ("LEG", "The VAT information of the Canary Islands tax (L) is inconsistent."),
    "BR-IP-": ("LEG", "The VAT information of the Ceuta and Melilla tax (M) is inconsistent."),
    "BR-": ("LEG", "Mandatory information of an EN 16931 invoice is missing or wrong."),
    "PEPPOL-COMMON-": ("LEG", "An identifier is malformed (wrong format or check digits)."),
    "PEPPOL-EN16931-CL": ("LEG", "A code is not in the code list Peppol allows."),
    "PEPPOL-EN16931-P": ("LEG", "A party identifier does not follow its scheme's format."),
    "PEPPOL-EN16931-R1": ("ITM", "An invoice line is inconsistent."),
    "PEPPOL-EN16931-": ("LEG", "The invoice breaks a Peppol BIS Billing 3.0 rule."),
}

# Refusals of the parser (services.factures.ubl): their messages already speak plainly.
_UNREADABLE = {
    "too-large": "OTH",
    "too-many-lines": "OTH",
    "not-xml": "UNR",
    "entity-forbidden": "UNR",
    "dtd-forbidden": "UNR",
    "unsupported-syntax": "UNR",
    "not-an-invoice": "UNR",
}


def _explanation(rule: str) -> tuple[str, str] | None:
    if rule in _RULES:
        return _RULES[rule]
    for prefix in sorted(_FAMILIES, key=len, reverse=True):
        if rule.startswith(prefix):
            return _FAMILIES[prefix]
    return None


def reason_for(finding: Finding, occurrences: int = 1) -> Reason:
    if finding.rule in _UNREADABLE:
        return Reason(_UNREADABLE[finding.rule], finding.message, finding.rule)
    explained = _explanation(finding.rule)
    # The official messages often start with their own id ("[BR-CO-16]-Amount due…").
    official = finding.message.strip().removeprefix(f"[{finding.rule}]-").strip().rstrip(".")
    where = f" ({occurrences} places)" if occurrences > 1 else ""
    if explained is None:
        return Reason("OTH", f"{official}{where} [{finding.rule}].", finding.rule)
    code, plain = explained
    return Reason(code, f"{plain}{where} [{finding.rule}: {official}]", finding.rule)


def reasons_for(findings: Iterable[Finding]) -> list[Reason]:
    """One reason per broken fatal rule (a rule broken on 300 lines is one reason), in order."""
    first: dict[str, Finding] = {}
    counts: dict[str, int] = {}
    for finding in findings:
        if finding.flag != "fatal":
            continue
        first.setdefault(finding.rule, finding)
        counts[finding.rule] = counts.get(finding.rule, 0) + 1
    return [reason_for(finding, counts[rule]) for rule, finding in first.items()]


def summary(reasons: Iterable[Reason], limit: int = 5) -> str:
    """The reasons as one paragraph for events and listings; the full list stays on the invoice."""
    listed = list(reasons)
    text = " ".join(reason.text for reason in listed[:limit])
    if len(listed) > limit:
        text += f" …and {len(listed) - limit} more problems."
    return text


# -- refusals that are not rule findings ---------------------------------------------------


def duplicate(
    number: str, earlier_kind: str | None, earlier_state: str, received_on: str
) -> Reason:
    earlier = "a credit note" if earlier_kind == "CreditNote" else "an invoice"
    return Reason(
        "OTH",
        f"Duplicate: number {number} of this supplier was already received on {received_on},"
        f" as {earlier} (it is {earlier_state}); it will not be processed twice. A supplier's"
        " number is booked once, whatever its issue date and whether it is an invoice or a"
        " credit note: a new document needs a new number.",
        "DUPLICATE",
    )


def unknown_preceding_invoice(numbers: list[str]) -> Reason:
    listed = ", ".join(numbers)
    return Reason(
        "REF",
        f"This credit note refers to invoice {listed}, which the commune never received from "
        "this supplier; check the preceding invoice reference (BT-25).",
        "UNKNOWN-PRECEDING-INVOICE",
    )


def addressed_elsewhere(buyer: str, tenant_participant: str | None) -> Reason:
    own = tenant_participant or "none configured"
    return Reason(
        "REC",
        f"The invoice is addressed to buyer {buyer} (BT-49), not to this commune ({own}).",
        "ANOTHER-BUYER",
    )


def unknown_tenant(tenant: str) -> Reason:
    return Reason(
        "REC",
        f"The receiving commune (tenant {tenant}) is not configured on the hub.",
        "UNKNOWN-TENANT",
    )


def corrupted(declared: str, actual: str) -> Reason:
    return Reason(
        "UNR",
        f"The document was damaged in transit: its SHA-256 is {actual}, the access point "
        f"announced {declared}. Send it again.",
        "CORRUPTED",
    )
