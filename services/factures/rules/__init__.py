"""EN 16931 and Peppol BIS 3.0 business rules, written in Python with their official ids.

``validate`` runs both rule sets on a parsed UBL Invoice or CreditNote; the
rules themselves live in ``en16931`` and ``peppol`` and are written with
``engine``.
"""

from __future__ import annotations

from services.factures.rules.en16931 import EN16931
from services.factures.rules.engine import Element, Finding, RuleSet, evaluate
from services.factures.rules.peppol import PEPPOL

ALL_RULE_SETS: tuple[RuleSet, ...] = (EN16931, PEPPOL)


def validate(root: Element, rule_sets: tuple[RuleSet, ...] = ALL_RULE_SETS) -> list[Finding]:
    """The findings of the rules on the document whose root element is ``root``."""
    return evaluate(root, rule_sets)


__all__ = ["ALL_RULE_SETS", "EN16931", "PEPPOL", "Finding", "validate"]
