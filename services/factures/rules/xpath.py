"""A fast evaluator for the XPath 1.0 subset the rules are written in.

lxml evaluates every XPath expression by walking the tree: a context such as
``//cac:InvoiceLine | //cac:CreditNoteLine`` visits every element of the
document, once per rule. This module compiles an expression into Python
closures instead, and answers ``//`` steps from a ``DocumentIndex`` (the
document's elements by tag, built in one pass), so that a rule whose context
names an element the document lacks costs one dictionary lookup.

The subset: unions of location paths (``/``, ``//`` at the start, ``.``,
``..``, child, ``parent::`` and ``ancestor::`` steps, ``@attribute`` and
``text()`` last); predicates made of paths, string literals, ``=``/``!=``,
``and``/``or``, ``not``, ``normalize-space``, ``translate``, ``starts-with``,
and ``substring(local-name(), string-length(local-name()) - n) = 's'`` (the
XPath 1.0 spelling of ``ends-with(local-name(), 's')``). Any other expression,
and any case the closures cannot answer exactly (``..`` above the root element,
a union of attribute values), is evaluated by lxml: results are the same
either way, in document order. ``tests/unit/test_rules_match_official_xslt.py``
checks that on every document of the corpus for every expression the rules use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, TypeAlias

from lxml import etree

Element: TypeAlias = etree._Element
Item: TypeAlias = "Element | str"
Nodes: TypeAlias = list[Any]  # elements, or strings (attribute values, text nodes)
NodesFn: TypeAlias = Callable[[Element], Nodes]
BoolFn: TypeAlias = Callable[[Element], bool]
StrFn: TypeAlias = Callable[[Element], str]


class Unsupported(Exception):
    """The expression is outside the subset: lxml evaluates it."""


class Fallback(Exception):
    """This evaluation cannot be answered exactly by the closures: lxml evaluates it."""


class DocumentIndex:
    """The elements of one document in document order, and by tag."""

    __slots__ = (
        "_groups",
        "_position",
        "by_tag",
        "children",
        "elements",
        "memo",
        "results",
        "root",
    )

    def __init__(self, root: Element) -> None:
        self.root = root
        self.elements: list[Element] = list(root.iter(etree.Element))
        by_tag: dict[str, list[Element]] = {}
        for element in self.elements:
            same = by_tag.get(element.tag)
            if same is None:
                by_tag[element.tag] = [element]
            else:
                same.append(element)
        self.by_tag = by_tag
        self._position: dict[Element, int] | None = None
        self.results: dict[str, Nodes] = {}  # absolute expressions, evaluated once
        self.memo: dict[tuple[str, Element], Any] = {}  # predicates and strings, per element
        self._groups: dict[tuple[str, str], dict[str, list[Element]]] = {}
        self.children: dict[Element, dict[Any, list[Element]]] = {}  # see children_named

    def grouped(self, tag: str, key: str, value_of: StrFn) -> dict[str, list[Element]]:
        """The elements ``tag`` by the value of ``value_of`` (named ``key``), in document order."""
        groups = self._groups.get((tag, key))
        if groups is None:
            groups = self._groups[(tag, key)] = {}
            for element in self.by_tag.get(tag, ()):
                value = value_of(element)
                same = groups.get(value)
                if same is None:
                    groups[value] = [element]
                else:
                    same.append(element)
        return groups

    def owns(self, node: Element) -> bool:
        """``node`` belongs to the indexed document."""
        return node.getroottree().getroot() is self.root

    def position(self) -> dict[Element, int]:
        if self._position is None:
            self._position = {element: n for n, element in enumerate(self.elements)}
        return self._position


_NO_CHILDREN: list[Element] = []


def children_named(node: Element, tag: Any) -> list[Element]:
    """``node``'s element children with ``tag`` (a Clark name, or ``etree.Element`` for all).

    While a document is indexed, each element's children are grouped by tag on the
    first question and answered from there (rules ask the same elements many times);
    the list is shared: callers must not modify it.
    """
    index = _ACTIVE.get()
    if index is None:
        return list(node.iterchildren(tag))
    groups = index.children.get(node)
    if groups is None:
        groups = index.children[node] = {}
        every: list[Element] = []
        for child in node:
            name = child.tag
            if isinstance(name, str):  # not a comment or processing instruction
                every.append(child)
                same = groups.get(name)
                if same is None:
                    groups[name] = [child]
                else:
                    same.append(child)
        groups[etree.Element] = every
    return groups.get(tag, _NO_CHILDREN)


# String values --------------------------------------------------------------------------

_XML_SPACE = re.compile(r"[ \t\r\n]+")


def string_value(item: Item) -> str:
    """XPath ``string()`` of an element (its descendant text), attribute value or text node."""
    if isinstance(item, str):
        return item
    if len(item) == 0:
        return item.text or ""
    return "".join(item.itertext())


def normalize_space(value: str) -> str:
    """XPath ``normalize-space``: only the four XML white-space characters count."""
    if value.isascii():  # the other ASCII white space (\v, \f) cannot occur in XML
        return " ".join(value.split())
    return _XML_SPACE.sub(" ", value).strip(" ")


def first_string(nodes: Nodes) -> str:
    return string_value(nodes[0]) if nodes else ""


# Tokens -----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<literal>'[^']*'|"[^"]*")
      | (?P<number>\d+(?:\.\d*)?)
      | (?P<symbol>//|::|!=|\.\.|[/|()\[\],=@.*])
      | (?P<name>[A-Za-z_][\w.-]*(?::[A-Za-z_][\w.-]*)?)
    )""",
    re.VERBOSE,
)
# XPath 1.0 has no ends-with: the rules spell it with substring and string-length.
_ENDS_WITH = re.compile(
    r"substring\(local-name\(\), string-length\(local-name\(\)\) - (\d+)\) = '([^']*)'"
)


def _ends_with_call(match: re.Match[str]) -> str:
    if int(match.group(1)) != len(match.group(2)) - 1:
        raise Unsupported(match.group(0))
    return f"name-ends-with('{match.group(2)}')"


def _tokens(expression: str) -> list[tuple[str, str]]:
    expression = _ENDS_WITH.sub(_ends_with_call, expression)
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expression):
        if expression[position:].isspace():
            break
        match = _TOKEN.match(expression, position)
        if match is None or match.end() == position:
            raise Unsupported(expression)
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


# Parser: expressions become closures ------------------------------------------------------
#
# Each parsed expression is (kind, function): kind "nodes" (a list of elements or
# strings, in document order), "string" or "boolean".

Compiled: TypeAlias = tuple[str, Callable[[Element], Any]]


# What a compiled relative path is, when it is one of the shapes worth a shortcut:
# ("child", tag) for one child step without predicates, ("attribute", name) for @name.
_SHAPE: dict[Callable[..., Any], tuple[str, Any]] = {}
_CONSTANT: dict[Callable[..., Any], str] = {}  # string literals, by their closure
# One child step with predicates, or ancestor::a/b: only boolean() gets a shortcut.
_TESTED_SHAPE: dict[Callable[..., Any], tuple[str, Any]] = {}


def _normalized_self(node: Element) -> str:
    return normalize_space(string_value(node))


_NON_BLANK: dict[Callable[..., Any], BoolFn] = {}


def _as_bool(compiled: Compiled) -> BoolFn:
    kind, function = compiled
    if kind == "boolean":
        return function
    if function in _NON_BLANK:
        return _NON_BLANK[function]
    shape = _SHAPE.get(function) or _TESTED_SHAPE.get(function)
    if shape is not None and shape[0] == "child":
        tag = shape[1]
        if tag is etree.Element:
            return _has_element_child
        return lambda node: bool(children_named(node, tag))
    if shape is not None and shape[0] == "attribute":
        name = shape[1]
        return lambda node: node.get(name) is not None
    if shape is not None and shape[0] == "ancestor child":
        ancestor_tag, child_tag = shape[1]

        key = f"ancestor::{ancestor_tag}/{child_tag}"

        def ancestor_with_child(node: Element) -> bool:
            index = _ACTIVE.get()
            if index is not None and index.owns(node):
                # The document's a elements with a b child, found once: usually none.
                holders = index.memo.get((key, index.root))
                if holders is None:
                    holders = index.memo[(key, index.root)] = [
                        a
                        for a in index.by_tag.get(ancestor_tag, ())
                        if next(a.iterchildren(child_tag), None) is not None
                    ]
                if not holders:
                    return False
            for ancestor in node.iterancestors(ancestor_tag):
                if next(ancestor.iterchildren(child_tag), None) is not None:
                    return True
            return False

        return ancestor_with_child
    if shape is not None and shape[0] == "tested child":
        tag, test = shape[1]

        def any_child(node: Element) -> bool:
            return any(test(child) for child in children_named(node, tag))

        return any_child
    if kind in ("nodes", "string"):
        return lambda node: bool(function(node))
    raise Unsupported(kind)


_MISSING: Any = object()


def _memoized(function: Callable[[Element], Any], key: str) -> Callable[[Element], Any]:
    """``function``, remembered per element while a document is indexed."""

    def memoized(node: Element) -> Any:
        index = _ACTIVE.get()
        if index is None:
            return function(node)
        slot = (key, node)
        value = index.memo.get(slot, _MISSING)
        if value is _MISSING:
            value = index.memo[slot] = function(node)
        return value

    _MEMO_KEY[memoized] = key
    return memoized


_MEMO_KEY: dict[Callable[..., Any], str] = {}
# name-ends-with('suffix') tests, by their closure: a //* step starting with one only
# looks at the elements whose tag ends so.
_NAME_SUFFIX: dict[Callable[..., Any], str] = {}
# Predicates ``[normalize-space(path) = 'literal']``, by their closure: (key, string, literal).
# A // step starting with one takes its candidates from DocumentIndex.grouped.
_KEYED: dict[Callable[..., Any], tuple[str, StrFn, str]] = {}


def _has_element_child(node: Element) -> bool:
    """``boolean(*)``: comments and processing instructions are not elements."""
    if not len(node):
        return False
    if isinstance(node[0].tag, str):
        return True
    return any(isinstance(child.tag, str) for child in node)


def _has_no_element_child(node: Element) -> bool:
    """``not(*)``."""
    if not len(node):
        return True
    return not _has_element_child(node)


def _blank(node: Element) -> bool:
    """``not(normalize-space())``."""
    if not len(node):
        return not (node.text or "").strip(" \t\r\n")
    return not string_value(node).strip(" \t\r\n")


def _empty(node: Element) -> bool:
    """``not(*) and not(normalize-space())``."""
    if not len(node):
        return not (node.text or "").strip(" \t\r\n")
    return not _has_element_child(node) and not string_value(node).strip(" \t\r\n")


def _as_string(compiled: Compiled) -> StrFn:
    kind, function = compiled
    if kind == "string":
        return function
    if kind == "nodes":
        shape = _SHAPE.get(function)
        if shape is not None and shape[0] == "child":
            tag = shape[1]

            def first_child_string(node: Element) -> str:
                found = children_named(node, tag)
                return string_value(found[0]) if found else ""

            return first_child_string
        if shape is not None and shape[0] == "attribute":
            name = shape[1]
            return lambda node: node.get(name) or ""
        return lambda node: first_string(function(node))
    raise Unsupported(kind)


class _Parser:
    def __init__(self, expression: str, namespaces: dict[str, str]) -> None:
        self.tokens = _tokens(expression)
        self.position = 0
        self.namespaces = namespaces
        self.depth = 0  # inside how many predicates
        self.relative = False  # a top-level branch depends on the context node
        self.calls = 0  # inside how many function calls

    # token helpers
    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        index = self.position + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise Unsupported("unexpected end")
        self.position += 1
        return token

    def accept(self, value: str) -> bool:
        token = self.peek()
        if token is not None and token[1] == value and token[0] in ("symbol", "name"):
            self.position += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if not self.accept(value):
            raise Unsupported(f"expected {value}")

    def done(self) -> bool:
        return self.position == len(self.tokens)

    def tag(self, qname: str) -> str:
        prefix, _, local = qname.rpartition(":")
        if not prefix:
            return local  # no default namespace in XPath 1.0: the null namespace
        if prefix not in self.namespaces:
            raise Unsupported(f"prefix {prefix}")
        return f"{{{self.namespaces[prefix]}}}{local}"

    # grammar
    def expression(self) -> Compiled:
        left = self.and_expression()
        if self.peek() != ("name", "or"):
            return left
        parts = [_as_bool(left)]
        while self.accept("or"):
            parts.append(_as_bool(self.and_expression()))
        return "boolean", _any_of(parts)

    def and_expression(self) -> Compiled:
        left = self.equality()
        if self.peek() != ("name", "and"):
            return left
        parts = [_as_bool(left)]
        while self.accept("and"):
            parts.append(_as_bool(self.equality()))
        return "boolean", _all_of(parts)

    def equality(self) -> Compiled:
        left = self.union()
        token = self.peek()
        if token is None or token[1] not in ("=", "!="):
            return left
        self.take()
        right = self.union()
        return "boolean", _comparison(left, right, equal=token[1] == "=")

    def union(self) -> Compiled:
        first = self.primary()
        if self.peek() != ("symbol", "|"):
            return first
        branches = [first]
        while self.accept("|"):
            branches.append(self.primary())
        if any(kind != "nodes" for kind, _ in branches):
            raise Unsupported("union of non-paths")
        return "nodes", _union([function for _, function in branches])

    def primary(self) -> Compiled:
        token = self.peek()
        if token is None:
            raise Unsupported("unexpected end")
        kind, value = token
        if kind == "literal":
            self.take()
            literal = value[1:-1]

            def constant(node: Element) -> str:
                return literal

            _CONSTANT[constant] = literal
            return "string", constant
        if kind == "number":
            raise Unsupported("numbers")
        if value == "(":
            self.take()
            inner = self.expression()
            self.expect(")")
            return inner
        next_token = self.peek(1)
        if (
            kind == "name"
            and next_token == ("symbol", "(")
            and value not in ("text", "node", "comment")
        ):
            return self.function_call()
        return "nodes", self.path()

    def arguments(self) -> list[Compiled]:
        self.expect("(")
        arguments: list[Compiled] = []
        if self.accept(")"):
            return arguments
        arguments.append(self.expression())
        while self.accept(","):
            arguments.append(self.expression())
        self.expect(")")
        return arguments

    def function_call(self) -> Compiled:
        start = self.position
        self.calls += 1
        kind, function = self.call()
        self.calls -= 1
        if (
            self.tokens[start][1] in ("normalize-space", "translate")
            and self.tokens[self.position - 2][1] != "("
            and not self.calls  # the outermost call only: its value is what rules share
        ):
            # normalize-space(cbc:ID) and the like: asked of the same elements by many
            # rules (one per VAT category), computed once per element and document.
            function = _memoized(function, self.source(start))
        return kind, function

    def source(self, start: int) -> str:
        return " ".join(value for _, value in self.tokens[start : self.position])

    def call(self) -> Compiled:
        name = self.take()[1]
        arguments = self.arguments()
        if name == "not" and len(arguments) == 1:
            test = _as_bool(arguments[0])
            if test is _has_element_child:
                return "boolean", _has_no_element_child
            if arguments[0][1] is _normalized_self:
                return "boolean", _blank
            return "boolean", lambda node: not test(node)
        if name == "normalize-space" and len(arguments) <= 1:
            if not arguments:
                # normalize-space() is not empty when the node has a non-white-space character.
                function = _normalized_self
                _NON_BLANK[function] = lambda node: bool(string_value(node).strip(" \t\r\n"))
                return "string", function
            of = _as_string(arguments[0])
            return "string", lambda node: normalize_space(of(node))
        if name == "translate" and len(arguments) == 3:
            return "string", self.translate(arguments)
        if name == "starts-with" and len(arguments) == 2:
            whole, start = _as_string(arguments[0]), _as_string(arguments[1])
            return "boolean", lambda node: whole(node).startswith(start(node))
        if name == "name-ends-with" and len(arguments) == 1 and arguments[0][0] == "string":
            suffix = arguments[0][1](None)

            # The Clark tag ends with the local name, and the suffix has no "}".
            def ends_with(node: Element) -> bool:
                return bool(node.tag.endswith(suffix))

            _NAME_SUFFIX[ends_with] = suffix
            return "boolean", ends_with
        raise Unsupported(f"function {name}")

    @staticmethod
    def translate(arguments: list[Compiled]) -> StrFn:
        if arguments[1][0] != "string" or arguments[2][0] != "string":
            raise Unsupported("translate with computed characters")
        source, target = arguments[1][1](None), arguments[2][1](None)
        table: dict[int, int | None] = {}
        for n, character in enumerate(source):
            table.setdefault(ord(character), ord(target[n]) if n < len(target) else None)
        of = _as_string(arguments[0])
        return lambda node: of(node).translate(table)

    def predicates(self) -> list[BoolFn]:
        tests: list[BoolFn] = []
        while self.accept("["):
            self.depth += 1
            start = self.position
            predicate = self.expression()
            self.depth -= 1
            if predicate[0] not in ("boolean", "nodes", "string"):
                raise Unsupported("predicate")
            test = _as_bool(predicate)
            if any(value == "[" for _, value in self.tokens[start : self.position]):
                test = _memoized(test, f"[{self.source(start)}]")
            tests.append(test)
            self.expect("]")
        return tests

    def path(self) -> NodesFn:
        """A location path: absolute (``/``, ``//``) or relative."""
        if self.accept("//"):
            steps = self.steps()
            return _descendant_path(steps)
        if self.accept("/"):
            steps = self.steps()
            return _absolute_path(steps)
        if self.depth == 0:
            self.relative = True
        return _relative_path(self.steps())

    def steps(self) -> list[_Step]:
        steps = [self.step()]
        while True:
            token = self.peek()
            if token == ("symbol", "/"):
                self.take()
                steps.append(self.step())
            elif token == ("symbol", "//"):
                raise Unsupported("// inside a path")
            else:
                break
        for step in steps[:-1]:
            if step.axis in ("attribute", "text"):
                raise Unsupported("attribute or text() before the last step")
        return steps

    def step(self) -> _Step:
        if self.accept(".."):
            return _Step("parent", None, [])
        if self.accept("."):
            return _Step("self", None, [])
        if self.accept("@"):
            kind, name = self.take()
            if kind != "name" or ":" in name:
                raise Unsupported("attribute name")
            return _Step("attribute", name, [])
        kind, name = self.take()
        axis = "child"
        if kind == "name" and self.peek() == ("symbol", "::"):
            self.take()
            if name not in ("parent", "ancestor", "child", "self"):
                raise Unsupported(f"axis {name}")
            axis = name
            kind, name = self.take()
        if kind == "name" and name == "text" and self.peek() == ("symbol", "("):
            self.expect("(")
            self.expect(")")
            if axis != "child":
                raise Unsupported("text() on another axis")
            return _Step("text", None, [])
        if kind == "symbol" and name == "*":
            tag = None
        elif kind == "name":
            tag = self.tag(name)
        else:
            raise Unsupported(f"step {name}")
        return _Step(axis, tag, self.predicates())


class _Step:
    __slots__ = ("axis", "name", "test", "tests")

    def __init__(self, axis: str, name: str | None, tests: list[BoolFn]) -> None:
        self.axis = axis  # child, parent, ancestor, self, attribute, text
        self.name = name  # a Clark tag, an attribute name, or None for * (and ., .., text())
        self.tests = tests
        self.test = _all_of(tests)  # the predicates together

    def matches(self, element: Element) -> bool:
        """The name test and the predicates, on an element reached by this step."""
        if self.name is not None and element.tag != self.name:
            return False
        return self.test(element)


def _comparison(left: Compiled, right: Compiled, *, equal: bool) -> BoolFn:
    """XPath 1.0 ``=`` and ``!=`` between a node-set or string and a string."""
    if left[0] == "nodes" and right[0] == "nodes":
        raise Unsupported("node-set compared with node-set")
    if "boolean" in (left[0], right[0]):
        raise Unsupported("boolean comparison")
    if left[0] == "string" and right[0] == "nodes":
        left, right = right, left
    if left[0] == "nodes" and right[0] == "string" and right[1] in _CONSTANT:
        return _compare_constant(left[1], _CONSTANT[right[1]], equal=equal)
    if left[0] == "nodes":
        nodes, other = left[1], _as_string(right)

        def compare(node: Element) -> bool:
            value = other(node)
            if equal:
                return any(string_value(item) == value for item in nodes(node))
            return any(string_value(item) != value for item in nodes(node))

        return compare
    first, second = _as_string(left), _as_string(right)
    if right[1] in _CONSTANT:
        value = _CONSTANT[right[1]]
        if equal:

            def is_value(node: Element) -> bool:
                return first(node) == value

            if first in _MEMO_KEY:
                _KEYED[is_value] = (_MEMO_KEY[first], first, value)
            return is_value
        return lambda node: first(node) != value
    if equal:
        return lambda node: first(node) == second(node)
    return lambda node: first(node) != second(node)


def _compare_constant(nodes: NodesFn, value: str, *, equal: bool) -> BoolFn:
    shape = _SHAPE.get(nodes)
    if shape is not None and shape[0] == "attribute" and equal:
        name = shape[1]
        return lambda node: node.get(name) == value
    if shape is not None and shape[0] == "child":
        tag = shape[1]
        if equal:
            return lambda node: any(
                string_value(child) == value for child in children_named(node, tag)
            )
        return lambda node: any(string_value(child) != value for child in children_named(node, tag))
    if equal:
        return lambda node: any(string_value(item) == value for item in nodes(node))
    return lambda node: any(string_value(item) != value for item in nodes(node))


# Location paths -----------------------------------------------------------------------------


def _children(current: Sequence[Element], step: _Step) -> list[Element]:
    name = step.name if step.name is not None else etree.Element
    if len(current) == 1:
        found = children_named(current[0], name)
    else:
        found = [child for element in current for child in children_named(element, name)]
    if step.tests:
        test = step.test
        found = [child for child in found if test(child)]
    return found


def _final(current: list[Element], step: _Step) -> Nodes:
    """The attribute values or text nodes of the last step, or the elements."""
    if step.axis == "attribute":
        assert step.name is not None
        name = step.name
        return [value for element in current if (value := element.get(name)) is not None]
    # text(): the element's text, then each child's tail, as XPath's text nodes.
    texts: list[str] = []
    for element in current:
        if element.text:
            texts.append(element.text)
        for child in element:
            if child.tail:
                texts.append(child.tail)
    return texts


def _relative_path(steps: list[_Step]) -> NodesFn:
    """From the context node: ``.``/``..``/``parent::`` steps, at most one ``ancestor::``
    step, then child steps."""
    leading: list[_Step] = []
    rest = list(steps)
    while rest and rest[0].axis in ("self", "parent"):
        leading.append(rest.pop(0))
    ancestor = rest.pop(0) if rest and rest[0].axis == "ancestor" else None
    last = rest.pop() if rest and rest[-1].axis in ("attribute", "text") else None
    if any(step.axis != "child" for step in rest):
        raise Unsupported("upward step after a child step")
    plain = not leading and ancestor is None
    if (
        len(leading) == 1
        and leading[0].axis == "self"
        and leading[0].name is None
        and not leading[0].tests
        and ancestor is None
        and not rest
        and last is None
    ):

        def itself(node: Element) -> Nodes:
            return [node]

        _SHAPE[itself] = ("self", None)
        return itself
    ancestor_child = None
    if (
        not leading
        and ancestor is not None
        and ancestor.name is not None
        and not ancestor.tests
        and len(rest) == 1
        and rest[0].name is not None
        and not rest[0].tests
        and last is None
    ):
        # ancestor::a/b: only boolean() gets a shortcut; the nodes come from evaluate.
        ancestor_child = (ancestor.name, rest[0].name)
    if plain and not rest and last is not None and last.axis == "attribute":
        name = last.name

        def attribute(node: Element) -> Nodes:
            value = node.get(name)
            return [] if value is None else [value]

        _SHAPE[attribute] = ("attribute", name)
        return attribute
    if plain and len(rest) == 1 and not rest[0].tests and last is None:
        tag = rest[0].name if rest[0].name is not None else etree.Element

        def children(node: Element) -> Nodes:
            return children_named(node, tag)

        _SHAPE[children] = ("child", tag)
        return children
    if plain and len(rest) > 1 and all(step.name is not None and not step.tests for step in rest):
        return _child_chain([step.name for step in rest if step.name is not None], last)
    if plain and len(rest) == 1 and rest[0].name is not None and last is None:
        tag, test = rest[0].name, _all_of(rest[0].tests)

        def tested_children(node: Element) -> Nodes:
            return [child for child in children_named(node, tag) if test(child)]

        _TESTED_SHAPE[tested_children] = ("tested child", (tag, test))
        return tested_children

    def evaluate(node: Element) -> Nodes:
        current: list[Element] = [node]
        for step in leading:
            element = current[0]
            if step.axis == "parent":
                parent = element.getparent()
                if parent is None:
                    if step.name is not None:
                        return []  # the document node has no name
                    raise Fallback("the parent of the root element is the document")
                element = parent
            if not step.matches(element):
                return []
            current = [element]
        if ancestor is not None:
            current = [a for a in current[0].iterancestors() if ancestor.matches(a)]
            current.reverse()  # document order
        for step in rest:
            if not current:
                return []
            current = _children(current, step)
        if ancestor is not None and rest and len(current) > 1:
            # Children of nested ancestors need not be in document order.
            raise Fallback("children of several ancestors")
        return _final(current, last) if last is not None else current

    if ancestor_child is not None:
        _TESTED_SHAPE[evaluate] = ("ancestor child", ancestor_child)
    return evaluate


def _child_chain(tags: list[str], last: _Step | None) -> NodesFn:
    """``a/b/c`` (``/@x``, ``/text()``) from the context node, children all the way."""
    first, rest = tags[0], tags[1:]

    def chain(node: Element) -> Nodes:
        current = children_named(node, first)
        for tag in rest:
            if not current:
                break
            if len(current) == 1:
                current = children_named(current[0], tag)
            else:
                current = [child for element in current for child in children_named(element, tag)]
        return _final(current, last) if last is not None else current

    return chain


def _root_of(node: Element) -> Element:
    index = _ACTIVE.get()
    if index is not None and node is index.root:  # contexts are selected from the root
        return node
    return node.getroottree().getroot()


_ACTIVE: ContextVar[DocumentIndex | None] = ContextVar("active_document_index", default=None)


def active_index(root: Element) -> DocumentIndex | None:
    index = _ACTIVE.get()
    return index if index is not None and index.root is root else None


def _absolute_path(steps: list[_Step]) -> NodesFn:
    """``/a/b``: the root element if it is ``a``, then children."""
    first, rest = steps[0], steps[1:]
    if first.axis != "child":
        raise Unsupported("absolute path not starting with a child step")
    last = rest[-1] if rest and rest[-1].axis in ("attribute", "text") else None
    if last is not None:
        rest = rest[:-1]
    if any(step.axis != "child" for step in rest):
        raise Unsupported("absolute path with another axis")

    def stepping(node: Element) -> Nodes:
        root = _root_of(node)
        current = [root] if first.matches(root) else []
        for step in rest:
            if not current:
                return []
            current = _children(current, step)
        return _final(current, last) if last is not None else current

    # With an index, the same as //a/b/c anchored at the root element.
    return _descendant_path(steps, without_index=stepping)


def _descendant_path(steps: list[_Step], without_index: NodesFn | None = None) -> NodesFn:
    """``//a/b/c``: every ``c`` of the document whose parent is ``b`` and grandparent ``a``.

    Candidates come from the document index (or one scan for the last step's tag)
    and are checked upwards, so they stay in document order without duplicates.
    With ``without_index`` (how ``/a/b/c`` is evaluated when no index is active),
    the path is anchored: ``a`` must be the root element.
    """
    anchored = without_index is not None
    last = steps[-1] if steps[-1].axis in ("attribute", "text") else None
    elements = steps[:-1] if last is not None else steps
    if not elements or any(step.axis != "child" for step in elements):
        raise Unsupported("// path with another axis")
    target, upward = elements[-1], list(reversed(elements[:-1]))
    upward_tags = [step.name for step in upward]
    keyed = _KEYED.get(target.tests[0]) if target.tests and target.name is not None else None
    suffix = _NAME_SUFFIX.get(target.tests[0]) if target.tests and target.name is None else None
    # With ``keyed``, DocumentIndex.grouped answers the first predicate.
    target_tests = target.tests[1:] if keyed is not None else target.tests
    target_test = _all_of(target_tests)
    upward_tests = [_all_of(step.tests) for step in upward]
    upward_tested = any(step.tests for step in upward)

    def evaluate(node: Element) -> Nodes:
        index = _ACTIVE.get()
        if index is not None and (node is index.root or index.owns(node)):
            return run(index.root, index)
        if without_index is not None:
            return without_index(node)
        return run(node.getroottree().getroot(), None)

    def run(root: Element, index: DocumentIndex | None) -> Nodes:
        if index is not None:
            for tag in upward_tags:
                if tag is not None and tag not in index.by_tag:
                    return []  # an ancestor the document does not have
        candidates: Sequence[Element]
        if target.name is None:
            if index is None:
                candidates = list(root.iter(etree.Element))
            elif suffix is not None:
                tags = {tag for tag in index.by_tag if tag.endswith(suffix)}
                if not tags:
                    return []
                if len(tags) == 1:
                    candidates = index.by_tag[tags.pop()]
                else:
                    candidates = [e for e in index.elements if e.tag in tags]
            else:
                candidates = index.elements
        elif index is not None:
            if keyed is not None:
                key, value_of, value = keyed
                candidates = index.grouped(target.name, key, value_of).get(value, ())
            else:
                candidates = index.by_tag.get(target.name, ())
        else:
            candidates = list(root.iter(target.name))
            if keyed is not None:
                candidates = [c for c in candidates if target.tests[0](c)]
        if not candidates:
            return []
        if upward_tags or anchored:
            # The tags of the ancestors first, the predicates only for what remains.
            kept: list[Element] = []
            for candidate in candidates:
                element = candidate
                for n, tag in enumerate(upward_tags):
                    parent = element.getparent()
                    if (
                        parent is None
                        or (tag is not None and parent.tag != tag)
                        or (upward_tested and not upward_tests[n](parent))
                    ):
                        break
                    element = parent
                else:
                    if not anchored or element.getparent() is None:
                        kept.append(candidate)
            candidates = kept
        found = [c for c in candidates if target_test(c)] if target_tests else list(candidates)
        return _final(found, last) if last is not None else found

    _RUN_ON_INDEX[evaluate] = run
    return evaluate


# Absolute paths, by closure: the same evaluation given the root and its active index.
_RUN_ON_INDEX: dict[Callable[..., Any], Callable[[Element, DocumentIndex], Nodes]] = {}


def _any_of(tests: list[BoolFn]) -> BoolFn:
    if len(tests) == 1:
        return tests[0]
    first, second = tests[0], _any_of(tests[1:])
    return lambda node: first(node) or second(node)


def _all_of(tests: list[BoolFn]) -> BoolFn:
    if not tests:
        return lambda node: True
    if len(tests) == 1:
        return tests[0]
    if tests == [_has_no_element_child, _blank]:
        return _empty  # not(*) and not(normalize-space()): Peppol's empty elements, on all
    first, second = tests[0], _all_of(tests[1:])

    def both(node: Element) -> bool:
        return first(node) and second(node)

    if first in _NAME_SUFFIX:  # name-ends-with('s') and ...: still only names ending so
        _NAME_SUFFIX[both] = _NAME_SUFFIX[first]
    return both


_UNION: dict[Callable[..., Any], list[NodesFn]] = {}  # unions, by closure: their branches


def _union(branches: list[NodesFn]) -> NodesFn:
    runs = [_RUN_ON_INDEX.get(branch) for branch in branches]
    absolute = [run for run in runs if run is not None]
    if len(absolute) < len(branches):
        absolute = []

    def evaluate(node: Element) -> Nodes:
        index = _ACTIVE.get()
        if absolute and index is not None and (node is index.root or index.owns(node)):
            root = index.root
            results = [found for run in absolute if (found := run(root, index))]
        else:
            results = [found for branch in branches if (found := branch(node))]
        if not results:
            return []
        if len(results) == 1:
            return results[0]
        merged: dict[Any, None] = {}
        for found in results:
            for item in found:
                if isinstance(item, str):
                    raise Fallback("a union of strings has no document order here")
                merged[item] = None
        root = _root_of(node)
        index = active_index(root)
        position = (
            index.position()
            if index is not None
            else {element: n for n, element in enumerate(root.iter(etree.Element))}
        )
        return sorted(merged, key=position.__getitem__)

    _UNION[evaluate] = branches
    return evaluate


# Compiled expressions -----------------------------------------------------------------------


class CompiledPath:
    """One expression: closures when the subset covers it, lxml's XPath otherwise.

    An expression made of absolute paths only has one result per document: while
    the document is indexed, it is computed once and shared (callers must not
    modify the list).
    """

    __slots__ = (
        "_branches",
        "_fast",
        "_xpath",
        "absolute",
        "direct",
        "expression",
        "native",
        "test",
    )

    def __init__(self, expression: str, namespaces: dict[str, str]) -> None:
        self.expression = expression
        self._xpath = etree.XPath(expression, namespaces=namespaces, smart_strings=False)
        self._fast: NodesFn | None = None
        self.absolute = False
        try:
            parser = _Parser(expression, namespaces)
            kind, function = parser.union()
            if kind == "nodes" and parser.done():
                self.absolute = not parser.relative
                self._fast = function
        except Unsupported:
            self._fast = None
        self.native = self._fast is not None
        # Closures that cannot raise Fallback (only "..", parent::, ancestor:: and unions
        # can) and have no per-document result are called directly.
        self.direct: NodesFn | None = None  # callable as is: relative, never falls back
        self._branches: list[NodesFn] | None = None
        if self._fast is not None and not self.absolute:
            fallible = {"..", "parent", "ancestor", "|"} & {value for _, value in parser.tokens}
            self.direct = None if fallible else self._fast
            self._branches = _UNION.get(self._fast)
        # boolean(expression), as cheaply as the shape allows (see _as_bool).
        self.test: BoolFn = self.exists
        if self.direct is not None and self._branches is None:
            self.test = _as_bool(("nodes", self.direct))

    def __call__(self, node: Element) -> Any:
        direct = self.direct
        if direct is not None:
            return direct(node)
        fast = self._fast
        if fast is None:
            return self._xpath(node)
        if self.absolute:
            index = _ACTIVE.get()
            if index is not None and (node is index.root or index.owns(node)):
                found = index.results.get(self.expression)
                if found is None:
                    found = index.results[self.expression] = self._run(fast, node)
                return found
        try:
            return fast(node)
        except Fallback:
            return self._xpath(node)

    def _run(self, fast: NodesFn, node: Element) -> Any:
        try:
            return fast(node)
        except Fallback:
            return self._xpath(node)

    def exists(self, node: Element) -> bool:
        """``boolean(expression)``: a union stops at its first non-empty branch."""
        branches = self._branches
        if branches is None:
            found = self(node)
            if not isinstance(found, list):
                raise TypeError(f"{self.expression!r} does not select nodes")
            return bool(found)
        try:
            return any(branch(node) for branch in branches)
        except Fallback:
            return bool(self._xpath(node))

    def by_lxml(self, node: Element) -> Any:
        """The same expression through lxml (what the closures must agree with)."""
        return self._xpath(node)


@contextmanager
def indexed(root: Element) -> Iterator[DocumentIndex]:
    """While active, ``//`` paths on ``root``'s document are answered from its index."""
    token = begin(root)
    try:
        yield _ACTIVE.get()  # type: ignore[misc]
    finally:
        end(token)


def begin(root: Element) -> Token[DocumentIndex | None]:
    """Index ``root``'s document and make the index active (``end`` undoes it)."""
    return _ACTIVE.set(DocumentIndex(root.getroottree().getroot()))


def end(token: Token[DocumentIndex | None]) -> None:
    _ACTIVE.reset(token)
