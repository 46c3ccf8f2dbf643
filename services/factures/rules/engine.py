"""How a business rule is written and evaluated, shared by the EN 16931 and Peppol rule sets.

A rule follows the shape of the official Schematron it stands for: a *context*
(an XPath 1.0 expression selecting the nodes the rule is about) and a *check*
(a Python predicate on one such node that is True when the rule holds). A rule
whose context selects nothing stays quiet, which is what the official suites
expect of fragments that do not contain the part a rule is about.

Within one ``RuleSet.pattern`` the first rule group whose context matches a node
claims it, as a Schematron pattern does (``Pattern``); most rules live in their
own pattern and are unaffected.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, Literal, TypeAlias, TypeVar

from lxml import etree

from services.factures.rules.xpath import CompiledPath, active_index, begin, end

NS = {
    "cac": "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2",
    "cbc": "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2",
    "ext": "urn:oasis:names:specification:ubl:schema:xsd:CommonExtensionComponents-2",
    "ubl-invoice": "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2",
    "ubl-creditnote": "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2",
}
_PREFIX_OF = {uri: prefix for prefix, uri in NS.items()}
_PREFIX_OF[NS["ubl-invoice"]] = ""
_PREFIX_OF[NS["ubl-creditnote"]] = ""

Flag = Literal["fatal", "warning"]
Element: TypeAlias = etree._Element
Check = Callable[[Element], bool]
T = TypeVar("T")


@dataclass(frozen=True)
class Finding:
    """One rule that does not hold, where, and what it means for the reader."""

    rule: str
    flag: Flag
    message: str
    location: str

    def as_json(self) -> dict[str, str]:
        return {
            "rule": self.rule,
            "flag": self.flag,
            "message": self.message,
            "location": self.location,
        }


@dataclass(frozen=True)
class Rule:
    """One assertion: on every node selected by ``context``, ``check`` must be True."""

    id: str
    flag: Flag
    context: str
    check: Check
    message: str


@dataclass
class Pattern:
    """Rules grouped by context; a node is checked by the first group whose context selects it.

    ``groups`` is a sequence of (context, rules) in priority order; every rule of
    a group must carry that group's context.
    """

    groups: list[tuple[str, list[Rule]]]


@dataclass
class RuleSet:
    """A named collection of rules and patterns, evaluated in order."""

    name: str
    rules: list[Rule] = field(default_factory=list)
    patterns: list[Pattern] = field(default_factory=list)

    def rule(
        self, rule_id: str, flag: Flag, context: str, message: str
    ) -> Callable[[Check], Check]:
        """Decorator: register ``check`` as rule ``rule_id``."""

        def register(check: Check) -> Check:
            self.rules.append(Rule(rule_id, flag, context, check, message))
            return check

        return register

    def ids(self) -> set[str]:
        ids = {rule.id for rule in self.rules}
        for pattern in self.patterns:
            ids.update(rule.id for _, rules in pattern.groups for rule in rules)
        return ids


_COMPILED: dict[str, CompiledPath] = {}


def compiled(xpath: str) -> CompiledPath:
    """``xpath`` compiled once per process (closures when possible, lxml otherwise)."""
    found = _COMPILED.get(xpath)
    if found is None:
        found = _COMPILED[xpath] = CompiledPath(xpath, NS)
    return found


def select(node: Element, xpath: str) -> list[Element]:
    """Evaluate an XPath 1.0 expression with the UBL prefixes; results are cached compiled.

    While ``evaluate`` runs, the list may be shared with other callers (per-document
    results): read it, do not modify it.
    """
    found = _COMPILED.get(xpath)
    if found is None:
        found = compiled(xpath)
    direct = found.direct
    result = direct(node) if direct is not None else found(node)
    if isinstance(result, list):
        return result  # nodes, or strings when the path ends in text() or @attribute
    raise TypeError(f"{xpath!r} does not select nodes")


def per_document(document: Element, key: str, compute: Callable[[Element], T]) -> T:
    """``compute(document)``, computed once per document while ``evaluate`` runs on it.

    For facts many rules or nodes ask of the whole document (``document`` is its
    root element); ``key`` names the fact. Outside ``evaluate``, computed each time.
    """
    index = active_index(document)
    if index is None:
        return compute(document)
    slot = (key, document)
    found = index.memo.get(slot, _NOT_YET)
    if found is _NOT_YET:
        found = index.memo[slot] = compute(document)
    return found


_NOT_YET: Any = object()


def location_of(node: Element) -> str:
    """A readable XPath of ``node``: ``/Invoice/cac:InvoiceLine[2]/cbc:LineExtensionAmount``."""
    steps: list[str] = []
    current: Element | None = node
    while current is not None:
        qname = etree.QName(current)
        prefix = _PREFIX_OF.get(qname.namespace or "")
        name = qname.localname if not prefix else f"{prefix}:{qname.localname}"
        parent = current.getparent()
        if parent is not None:
            position, of = _sibling_positions(parent)[current]
            if of > 1:
                name += f"[{position}]"
        steps.append(name)
        current = parent
    return "/" + "/".join(reversed(steps))


def _sibling_positions(parent: Element) -> dict[Element, tuple[int, int]]:
    """Each child's position among its parent's children of its tag, and how many there
    are; computed once per parent while ``evaluate`` runs. Counted for each finding, a
    document of 16,000 empty notes (each a finding) took 22 s."""
    by_parent: dict[Element, dict[Element, tuple[int, int]]] = per_document(
        parent.getroottree().getroot(), "sibling positions", lambda _: {}
    )
    positions = by_parent.get(parent)
    if positions is None:
        counts = Counter(child.tag for child in parent)
        seen: Counter[Any] = Counter()
        positions = by_parent[parent] = {}
        for child in parent:
            seen[child.tag] += 1
            positions[child] = (seen[child.tag], counts[child.tag])
    return positions


def evaluate(root: Element, rule_sets: Iterable[RuleSet]) -> list[Finding]:
    """Every finding of every rule of ``rule_sets`` on the document ``root``.

    The document is indexed once (its elements by tag) and each distinct context
    is selected once, however many rules share it.
    """
    findings: list[Finding] = []
    contexts: dict[str, list[Element]] = {}

    def nodes_of(context: str) -> list[Element]:
        nodes = contexts.get(context)
        if nodes is None:
            nodes = contexts[context] = select(root, context)
        return nodes

    token = begin(root)  # a try/finally, as cheap as it gets (see xpath.indexed)
    try:
        for rule_set in rule_sets:
            context, nodes = None, []
            for rule in rule_set.rules:
                if rule.context != context:  # rules come in runs sharing a context
                    context = rule.context
                    nodes = nodes_of(context)
                if len(nodes) == 1:  # most contexts: the document, its totals (inlined _apply)
                    try:
                        holds = rule.check(nodes[0])
                    except (ArithmeticError, ValueError, TypeError):
                        holds = False
                    if not holds:
                        findings.append(
                            Finding(rule.id, rule.flag, rule.message, location_of(nodes[0]))
                        )
                elif nodes:
                    _apply(rule, nodes, findings)
            for pattern in rule_set.patterns:
                claimed: set[Element] = set()
                for context, rules in pattern.groups:
                    nodes = [node for node in nodes_of(context) if node not in claimed]
                    if not nodes:
                        continue
                    claimed.update(nodes)
                    for rule in rules:
                        _apply(rule, nodes, findings)
    finally:
        end(token)
    return findings


def _apply(rule: Rule, nodes: Sequence[Element], findings: list[Finding]) -> None:
    for node in nodes:
        try:
            holds = rule.check(node)
        except (ArithmeticError, ValueError, TypeError):
            # A value the rule cannot even compute with (a malformed amount) breaks it.
            holds = False
        if not holds:
            findings.append(Finding(rule.id, rule.flag, rule.message, location_of(node)))


# Helpers for checks --------------------------------------------------------------------


def text(node: Element, xpath: str) -> str | None:
    """The stripped text of the first node ``xpath`` selects, or None when there is none."""
    found = _COMPILED.get(xpath)
    if found is None:
        found = compiled(xpath)
    direct = found.direct
    selected = direct(node) if direct is not None else select(node, xpath)
    if not selected:
        return None
    value = selected[0]
    content = value if isinstance(value, str) else (value.text or "")
    return content.strip()


def texts(node: Element, xpath: str) -> list[str]:
    return [
        (value if isinstance(value, str) else (value.text or "")).strip()
        for value in select(node, xpath)
    ]


def exists(node: Element, xpath: str) -> bool:
    found = _COMPILED.get(xpath)
    if found is None:
        found = compiled(xpath)
    return found.test(node)


#: ``xs:decimal``'s lexical form. Python's ``Decimal`` takes more ("2_42.00", "1E3",
#: other scripts' digits), which the schema, the official rules and the accounting
#: software refuse or read otherwise.
_XS_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def decimal(value: str | None) -> Decimal | None:
    """An XML decimal as a Decimal; None when absent or not an ``xs:decimal``."""
    if value is None or not _XS_DECIMAL.fullmatch(value):
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None


def amount(node: Element, xpath: str) -> Decimal | None:
    return decimal(text(node, xpath))


def amounts(node: Element, xpath: str) -> list[Decimal]:
    """All numeric values ``xpath`` selects; a value that is not a number counts as zero."""
    return [decimal(value) or Decimal(0) for value in texts(node, xpath)]


def round2(value: Decimal) -> Decimal:
    """Round to 2 decimals as XPath's ``round(x * 100) div 100`` does in the official rules.

    XPath rounds halves towards positive infinity (``round(-2.5) = -2``), not away
    from zero, so negative amounts (credit corrections) round like the reference.
    """
    return (value * 100 + Decimal("0.5")).to_integral_value(rounding=ROUND_FLOOR) / 100
