"""docs/problems.md against the code: every problem type the hub can answer is catalogued
under the service that answers it, with its HTTP status and title, and every catalogued
type is still answered.

The types are found by reading the code (``ast``), not by running it. A type is a slug
that reaches ``PROBLEM_BASE + slug`` (``problem_response``, ``soap_fault``) or the
``self.slug`` of an exception that carries one (``ProblemError``, WS4PM's ``Ws4pmFault``).
A function or class that hands one of its parameters on as the slug is a way in too
(``Conflict``, ``kernel.app._refusal``, ``ws4pm_fault``…), found to a fixpoint, so each
literal slug is seen where it is written, with the status and title that go with it. A
slug held in a variable is resolved when its values are literals: a local constant,
``a if c else b``, an f-string over a ``Literal[...]`` parameter, ``{...}.get(key,
default)``. ``exc.slug`` hands on a problem made elsewhere, and seen there. Anything else
fails ``test_every_slug_is_resolved``, naming the place. A problem class counts while the
class (or a subclass) is named somewhere besides its definition.

The sandbox (``sandbox/``) stands in for outside services: its problems are not the hub's,
and it is not scanned.
"""

from __future__ import annotations

import ast
import functools
import itertools
import re
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kernel.errors import PROBLEM_BASE

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = Path("docs/problems.md")
PACKAGES = ("kernel", "services", "gateway", "hub")
AREAS = ("kernel", "courrier", "factures", "urban", "meeting", "gateway", "hub")
MEMBERS = ("slug", "status", "title")

#: The statuses of types answered with a status read at run time, by (file, slug). Each
#: entry must match a place the scan finds.
VARIABLE_STATUSES: dict[tuple[str, str], frozenset[int]] = {
    # kernel.errors' handler of Starlette's HTTPException names the type after its status:
    # routing's 404 and 405, and FastAPI's 400 for a body it cannot parse (a multipart
    # form, for one); the hub raises no HTTPException of its own.
    ("kernel/errors.py", "not-found"): frozenset({404}),
    ("kernel/errors.py", "method-not-allowed"): frozenset({405}),
    ("kernel/errors.py", "body-too-large"): frozenset({413}),
    ("kernel/errors.py", "http-error"): frozenset({400}),
}


# -- reading the code ---------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A parameter of the function at hand: its caller's argument decides the value."""

    name: str


#: ``exc.slug``, ``problem.status``: read off a problem made elsewhere (and seen there).
CARRIED = "carried"

#: What an expression can be: one of these literals, a parameter, carried, or unknown.
Value = frozenset[str | int] | Param | str | None


@dataclass
class Module:
    path: str
    area: str
    tree: ast.Module
    constants: dict[str, ast.expr] = field(default_factory=dict)


@dataclass
class Scope:
    """A function, or a module's top level: its parameters, local assignments and nodes."""

    module: Module
    node: ast.AST
    qualname: str
    owner: str | None = None  # the class of a method
    owner_bases: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    keyword_only: list[str] = field(default_factory=list)
    defaults: dict[str, ast.expr] = field(default_factory=dict)
    annotations: dict[str, ast.expr] = field(default_factory=dict)
    assigned: dict[str, list[ast.expr]] = field(default_factory=dict)
    nodes: list[ast.AST] = field(default_factory=list)
    #: One value of each ``Literal[...]`` parameter, while the scan reads one case at a time.
    bound: dict[str, str | int] = field(default_factory=dict)

    @property
    def is_init(self) -> bool:
        return self.owner is not None and self.qualname.endswith(".__init__")

    @property
    def sink_name(self) -> str:
        """The name its callers call it by: a class for its ``__init__``."""
        if isinstance(self.node, ast.Module):
            return ""
        return self.owner if self.is_init and self.owner else self.qualname.rpartition(".")[2]

    def calls(self) -> Iterator[ast.Call]:
        return (node for node in self.nodes if isinstance(node, ast.Call))

    def cases(self) -> Iterator[None]:
        """Each combination of its ``Literal[...]`` parameters' values, bound in turn: a
        slug f"no-{part}" and a title f"A request without any {part}" go together."""
        literal = {name: _literals(a) for name, a in self.annotations.items()}
        names = [name for name, values in literal.items() if values]
        for values in itertools.product(*(sorted(literal[n] or (), key=str) for n in names)):
            self.bound = dict(zip(names, values, strict=True))
            yield
        self.bound = {}


@dataclass(frozen=True)
class Sink:
    """A way into a problem type: which argument gives its slug, its status, its title."""

    where: str
    params: tuple[str, ...]
    defaults: tuple[tuple[str, Value], ...]
    members: tuple[tuple[str, Value], ...]

    def member(self, name: str) -> Value:
        return dict(self.members).get(name)


@dataclass(frozen=True)
class Raised:
    slug: str
    statuses: frozenset[int] | None  # None: read at run time
    titles: frozenset[str] | None  # None: made at run time
    area: str
    where: str
    made_by: str | None  # the class whose construction raises it


@dataclass
class Scan:
    raised: list[Raised] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    sinks: dict[str, Sink] = field(default_factory=dict)


def _area(path: str) -> str:
    parts = path.split("/")
    return parts[1] if parts[0] == "services" else parts[0]


def _modules(root: Path) -> list[Module]:
    modules = []
    for package in PACKAGES:
        for file in sorted((root / package).rglob("*.py")):
            path = file.relative_to(root).as_posix()
            module = Module(path, _area(path), ast.parse(file.read_text(), path))
            for statement in module.tree.body:
                if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                    target = statement.targets[0]
                    if isinstance(target, ast.Name):
                        module.constants[target.id] = statement.value
            modules.append(module)
    return modules


def _base_names(node: ast.ClassDef) -> list[str]:
    return [
        base.id if isinstance(base, ast.Name) else base.attr
        for base in node.bases
        if isinstance(base, (ast.Name, ast.Attribute))
    ]


def _own_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function's (or module's) own body, not of the functions within it
    (their defaults and decorators are its own)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            extras: list[ast.AST] = [*child.args.defaults]
            extras += [d for d in child.args.kw_defaults if d is not None]
            if not isinstance(child, ast.Lambda):
                extras += child.decorator_list
            for extra in extras:
                yield extra
                yield from _own_nodes(extra)
            continue
        yield child
        yield from _own_nodes(child)


def _scope_of(module: Module, node: ast.AST, qualname: str, owner: ast.ClassDef | None) -> Scope:
    scope = Scope(module, node, qualname)
    if owner is not None:
        scope.owner, scope.owner_bases = owner.name, _base_names(owner)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        positional = [*node.args.posonlyargs, *node.args.args]
        if owner is not None and positional and positional[0].arg in ("self", "cls"):
            positional = positional[1:]
        scope.params = [argument.arg for argument in positional]
        scope.keyword_only = [argument.arg for argument in node.args.kwonlyargs]
        with_defaults = positional[len(positional) - len(node.args.defaults) :]
        for argument, default in zip(with_defaults, node.args.defaults, strict=True):
            scope.defaults[argument.arg] = default
        for argument, kw_default in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True):
            if kw_default is not None:
                scope.defaults[argument.arg] = kw_default
        for argument in [*positional, *node.args.kwonlyargs]:
            if argument.annotation is not None:
                scope.annotations[argument.arg] = argument.annotation
    for own in _own_nodes(node):
        scope.nodes.append(own)
        if isinstance(own, (ast.Assign, ast.AnnAssign)) and own.value is not None:
            targets = own.targets if isinstance(own, ast.Assign) else [own.target]
            if len(targets) == 1 and isinstance(targets[0], ast.Name):
                scope.assigned.setdefault(targets[0].id, []).append(own.value)
    return scope


def _scopes(module: Module) -> Iterator[Scope]:
    def walk(node: ast.AST, prefix: str, owner: ast.ClassDef | None) -> Iterator[Scope]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.", child)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield _scope_of(module, child, prefix + child.name, owner)
                yield from walk(child, f"{prefix}{child.name}.", None)
            else:
                yield from walk(child, prefix, owner)

    yield _scope_of(module, module.tree, "<module>", None)
    yield from walk(module.tree, "", None)


def _literals(annotation: ast.expr | None) -> frozenset[str | int] | None:
    """The values of a ``Literal[...]`` annotation."""
    if not isinstance(annotation, ast.Subscript):
        return None
    name = annotation.value
    if not (isinstance(name, ast.Name) and name.id == "Literal") and not (
        isinstance(name, ast.Attribute) and name.attr == "Literal"
    ):
        return None
    items = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
    values = [
        item.value
        for item in items
        if isinstance(item, ast.Constant) and isinstance(item.value, str | int)
    ]
    return frozenset(values) if len(values) == len(items) else None


def _union(values: Iterable[Value]) -> Value:
    found: set[str | int] = set()
    for value in values:
        if not isinstance(value, frozenset):
            return None
        found |= value
    return frozenset(found)


def evaluate(expression: ast.expr | None, scope: Scope, depth: int = 0) -> Value:
    """What ``expression`` can be, where ``scope`` says what its names are."""
    if expression is None or depth > 20:
        return None
    deeper = depth + 1
    match expression:
        case ast.Constant(value=bool()):
            return None
        case ast.Constant(value=str() | int() as literal):
            return frozenset({literal})
        case ast.IfExp(body=body, orelse=orelse):
            return _union([evaluate(body, scope, deeper), evaluate(orelse, scope, deeper)])
        case ast.JoinedStr(values=parts):
            choices: list[list[str]] = []
            for part in parts:
                inner = part.value if isinstance(part, ast.FormattedValue) else part
                value = evaluate(inner, scope, deeper)
                if not isinstance(value, frozenset):
                    return None
                choices.append([str(v) for v in value])
            return frozenset("".join(chosen) for chosen in itertools.product(*choices))
        case ast.Name(id=name):
            if name in scope.bound:
                return frozenset({scope.bound[name]})
            if name in scope.params or name in scope.keyword_only:
                return _literals(scope.annotations.get(name)) or Param(name)
            if name in scope.assigned:
                return _union(evaluate(v, scope, deeper) for v in scope.assigned[name])
            if name in scope.module.constants:
                top = Scope(scope.module, scope.module.tree, "<module>")
                return evaluate(scope.module.constants[name], top, deeper)
            return None
        case ast.Attribute(attr="slug" | "status" | "title"):
            return CARRIED
        case ast.Call(
            func=ast.Attribute(value=ast.Dict(values=values), attr="get"), args=[_, default]
        ):
            return _union(evaluate(v, scope, deeper) for v in [*values, default])
        case ast.Subscript(value=ast.Dict(values=values)):
            return _union(evaluate(v, scope, deeper) for v in values)
    return None


def _self_attribute(scope: Scope, attribute: str) -> ast.expr | None:
    """What ``self.<attribute> = ...`` assigns in this method, if it does."""
    for node in scope.nodes:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        pairs: Iterable[tuple[ast.expr, ast.expr]] = (
            zip(target.elts, value.elts, strict=False)
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
            else [(target, value)]
        )
        for name, assigned in pairs:
            if (
                isinstance(name, ast.Attribute)
                and name.attr == attribute
                and isinstance(name.value, ast.Name)
                and name.value.id == "self"
            ):
                return assigned
    return None


def _callee(call: ast.Call, scope: Scope) -> list[str]:
    """The names a call may reach a way in by: ``super().__init__`` reaches the bases."""
    function = call.func
    if (
        isinstance(function, ast.Attribute)
        and function.attr == "__init__"
        and isinstance(function.value, ast.Call)
        and isinstance(function.value.func, ast.Name)
        and function.value.func.id == "super"
    ):
        return scope.owner_bases
    if isinstance(function, ast.Name):
        return [function.id]
    if isinstance(function, ast.Attribute):
        return [function.attr]
    return []


def _value_at(call: ast.Call, scope: Scope, sink: Sink, member: str) -> Value:
    """The value a call gives a sink's member: a literal, the caller's parameter…"""
    value = sink.member(member)
    if not isinstance(value, Param):
        return value
    for position, argument in enumerate(call.args):
        if isinstance(argument, ast.Starred):
            return None
        if position < len(sink.params) and sink.params[position] == value.name:
            return evaluate(argument, scope)
    for keyword in call.keywords:
        if keyword.arg == value.name:
            return evaluate(keyword.value, scope)
    return dict(sink.defaults).get(value.name)


def _own_way_in(scope: Scope) -> tuple[Callable[[], dict[str, Value]], str] | None:
    """A way in of its own, ``PROBLEM_BASE + slug`` or an exception keeping ``self.slug``:
    how to read its slug, status and title, and where it is."""
    added = [
        node
        for node in scope.nodes
        if isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Add)
        and isinstance(node.left, ast.Name)
        and node.left.id == "PROBLEM_BASE"
    ]
    if added:
        slug = added[0].right

        def made() -> dict[str, Value]:
            given = {m: Param(m) if m in scope.params else None for m in MEMBERS}
            return {**given, "slug": evaluate(slug, scope)}

        return made, f"{scope.module.path}:{added[0].lineno} ({scope.qualname})"
    kept = _self_attribute(scope, "slug") if scope.is_init else None
    if kept is None:
        return None

    def carried() -> dict[str, Value]:
        return {m: evaluate(_self_attribute(scope, m), scope) for m in MEMBERS}

    return carried, f"{scope.module.path}:{kept.lineno} ({scope.qualname})"


def _sink(scope: Scope, members: dict[str, Value]) -> Sink:
    defaults = tuple((name, evaluate(d, scope)) for name, d in scope.defaults.items())
    where = f"{scope.module.path}:{getattr(scope.node, 'lineno', 0)}"
    return Sink(where, tuple(scope.params), defaults, tuple(members.items()))


def _record(result: Scan, scope: Scope, members: dict[str, Value], where: str) -> None:
    slugs, status, title = (members.get(m) for m in MEMBERS)
    if not isinstance(slugs, frozenset):
        if slugs is not CARRIED:  # handed on from a problem made elsewhere
            result.unresolved.append(where)
        return
    statuses = titles = None
    if isinstance(status, frozenset):
        statuses = frozenset(s for s in status if isinstance(s, int))
    if isinstance(title, frozenset):
        titles = frozenset(t for t in title if isinstance(t, str))
    made_by = scope.owner if scope.is_init else None
    for slug in slugs:
        result.raised.append(Raised(str(slug), statuses, titles, scope.module.area, where, made_by))


@functools.cache
def scan(root: Path = ROOT) -> Scan:
    modules = _modules(root)
    scopes = [scope for module in modules for scope in _scopes(module)]
    result = Scan()

    # The ways in of their own: PROBLEM_BASE + slug, and self.slug kept by an exception.
    for scope in scopes:
        own = _own_way_in(scope)
        if own is None:
            continue
        read, where = own
        if isinstance(read()["slug"], Param):
            result.sinks[scope.sink_name] = _sink(scope, read())
            continue
        for _ in scope.cases():
            _record(result, scope, read(), where)

    # Whoever hands a parameter on as the slug is a way in too, and so on.
    def sink_called(call: ast.Call, scope: Scope) -> Sink | None:
        return next((result.sinks[n] for n in _callee(call, scope) if n in result.sinks), None)

    classes = [n for m in modules for n in ast.walk(m.tree) if isinstance(n, ast.ClassDef)]
    with_init = {scope.owner for scope in scopes if scope.is_init}
    grown = True
    while grown:
        grown = False
        for scope in scopes:
            if not scope.sink_name or scope.sink_name in result.sinks:
                continue
            handed: dict[str, Value] = {}
            for call in scope.calls():
                sink = sink_called(call, scope)
                if sink is not None and isinstance(_value_at(call, scope, sink, "slug"), Param):
                    for member in MEMBERS:  # a SOAP fault has no title, its Problem has
                        if handed.get(member) is None:
                            handed[member] = _value_at(call, scope, sink, member)
            if handed:
                result.sinks[scope.sink_name] = _sink(scope, handed)
                grown = True
        # A subclass without an __init__ of its own is called as its base is.
        for node in classes:
            if node.name not in result.sinks and node.name not in with_init:
                bases = [result.sinks[b] for b in _base_names(node) if b in result.sinks]
                if bases:
                    result.sinks[node.name] = bases[0]
                    grown = True

    # Every call into a way in, with the slug it gives.
    for scope in scopes:
        for call in scope.calls():
            sink = sink_called(call, scope)
            if sink is None:
                continue
            handed_on = isinstance(_value_at(call, scope, sink, "slug"), Param)
            if handed_on and scope.sink_name in result.sinks:
                continue  # its own callers give the slug
            where = f"{scope.module.path}:{call.lineno} ({scope.qualname})"
            for _ in scope.cases():
                _record(result, scope, {m: _value_at(call, scope, sink, m) for m in MEMBERS}, where)
    in_use = _in_use(modules)
    result.raised = [r for r in result.raised if r.made_by is None or in_use(r.made_by)]
    return result


def _in_use(modules: list[Module]) -> Callable[[str], bool]:
    """Whether a class, or a subclass, is named somewhere besides in class definitions."""
    named: set[str] = set()
    subclasses: dict[str, set[str]] = defaultdict(set)
    for module in modules:
        nodes = list(ast.walk(module.tree))
        bases = set()
        for node in nodes:
            if isinstance(node, ast.ClassDef):
                bases |= {id(base) for base in node.bases}
                for base in _base_names(node):
                    subclasses[base].add(node.name)
        for node in nodes:
            if id(node) in bases:
                continue
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                named.add(node.id)
            elif isinstance(node, ast.Attribute):
                named.add(node.attr)

    def in_use(name: str) -> bool:
        seen, waiting = set(), [name]
        while waiting:
            current = waiting.pop()
            if current in named:
                return True
            seen.add(current)
            waiting += [child for child in subclasses[current] if child not in seen]
        return False

    return in_use


# -- reading the catalogue ------------------------------------------------------------------

_ROW = re.compile(r"^\|\s*`(?P<slug>[a-z0-9]+(?:-[a-z0-9]+)*)`\s*\|")


@dataclass(frozen=True)
class Row:
    area: str | None
    slug: str
    statuses: frozenset[int]
    title: str
    line: int


def catalogue_rows(text: str) -> list[Row]:
    """The table rows of the catalogue that name a type, with the section (``## ... (`area`)``)
    each is under: | `slug` | status | title | when | what to do |."""
    rows, area = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            named = re.search(r"`([a-z]+)`", line)
            area = named.group(1) if named and named.group(1) in AREAS else None
        found = _ROW.match(line)
        if found:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            statuses = frozenset(int(s) for s in re.findall(r"\b[1-5]\d\d\b", cells[1]))
            title = cells[2] if len(cells) == 5 else ""
            rows.append(Row(area, found["slug"], statuses, title, number))
    return rows


# -- the tests ------------------------------------------------------------------------------


def _raised_by_area(found: Scan) -> dict[tuple[str, str], set[int]]:
    statuses: dict[tuple[str, str], set[int]] = defaultdict(set)
    for raised in found.raised:
        known = raised.statuses
        if known is None:
            known = VARIABLE_STATUSES.get((raised.where.partition(":")[0], raised.slug))
        statuses[raised.area, raised.slug] |= known or set()
    return statuses


def _catalogued_by_area(rows: list[Row]) -> dict[tuple[str, str], set[int]]:
    statuses: dict[tuple[str, str], set[int]] = defaultdict(set)
    for row in rows:
        statuses[row.area or "", row.slug] |= row.statuses
    return statuses


def _catalogue(root: Path = ROOT) -> list[Row]:
    return catalogue_rows((root / CATALOGUE).read_text(encoding="utf-8"))


def test_the_scan_finds_the_ways_in() -> None:
    found = scan()
    for way_in in ("ProblemError", "Conflict", "problem_response", "soap_fault"):
        assert way_in in found.sinks, f"the scan no longer sees {way_in}: the scan needs mending"
    assert len({raised.slug for raised in found.raised}) > 100


def test_every_slug_is_resolved() -> None:
    found = scan()
    unresolved = found.unresolved
    assert not unresolved, (
        "a problem's slug the scan cannot resolve to literals; make it literal (or a local"
        " constant), or teach this test: " + ", ".join(unresolved)
    )
    variable = {(r.where.partition(":")[0], r.slug) for r in found.raised if r.statuses is None}
    assert variable == set(VARIABLE_STATUSES), (
        "a status read at run time: give it in VARIABLE_STATUSES (or drop a stale entry):"
        f" {sorted(variable ^ set(VARIABLE_STATUSES))}"
    )


def test_every_problem_type_raised_is_catalogued_with_its_status() -> None:
    found = scan()
    raised = _raised_by_area(found)
    catalogued = _catalogued_by_area(_catalogue())
    where = {(r.area, r.slug): r.where for r in found.raised}
    wrong = [
        f"{slug} ({sorted(statuses)}) under `{area}`, raised at {where[area, slug]}"
        if (area, slug) not in catalogued
        else f"{slug} under `{area}`: the code answers {sorted(statuses)}, the catalogue"
        f" says {sorted(catalogued[area, slug])}"
        for (area, slug), statuses in sorted(raised.items())
        if catalogued.get((area, slug)) != statuses
    ]
    assert not wrong, f"{CATALOGUE} lacks, or is wrong about: " + "; ".join(wrong)


def test_every_catalogued_problem_type_is_still_raised() -> None:
    raised = _raised_by_area(scan())
    rows = _catalogue()
    outside = [f"line {row.line}: {row.slug}" for row in rows if row.area is None]
    assert not outside, f"types outside a service's section of {CATALOGUE}: {outside}"
    stale = [
        f"line {row.line}: {row.slug} under `{row.area}`"
        for row in rows
        if (row.area, row.slug) not in raised
    ]
    assert not stale, f"{CATALOGUE} lists types no code of that section raises: {stale}"


def test_catalogued_titles_are_the_answers_titles() -> None:
    titles: dict[tuple[str, str], set[str]] = defaultdict(set)
    for raised in scan().raised:
        titles[raised.area, raised.slug] |= raised.titles or set()
    cells: dict[tuple[str, str], str] = defaultdict(str)
    for row in _catalogue():
        cells[row.area or "", row.slug] += " " + row.title
    wrong = [
        f"{slug} under `{area}`: {title!r}"
        for (area, slug), expected in sorted(titles.items())
        for title in sorted(expected)
        if title not in cells[area, slug]
    ]
    assert not wrong, f"titles the code answers with, missing from {CATALOGUE}: {wrong}"


def test_the_catalogue_names_the_type_uris() -> None:
    assert PROBLEM_BASE in (ROOT / CATALOGUE).read_text(encoding="utf-8")


_MADE_UP_SERVICE = """
from typing import Literal
from kernel.errors import Conflict, ProblemError, problem_response

class Plain(ProblemError):
    def __init__(self) -> None:
        super().__init__(422, "plain-new", "Plain", "detail")

class Stale(Conflict):
    def __init__(self) -> None:
        super().__init__("stale-new", "detail")

class Never(ProblemError):  # defined, never raised
    def __init__(self) -> None:
        super().__init__(400, "never-raised", "Never", "detail")

class Without(ProblemError):
    def __init__(self, part: Literal["a", "b"]) -> None:
        super().__init__(422, f"no-{part}", "Without", "detail")

def refuse(status: int, slug: str) -> object:
    return problem_response(status, slug, "Refused", "detail")

def handler(flag: bool, made: str) -> object:
    slug = "first-new" if flag else "second-new"
    if flag:
        raise Plain()
    if made:
        raise ProblemError(400, made + "-x", "Unknown", "detail")
    refuse(400, "handed-new")
    if slug:
        raise ProblemError(409, slug, "Chosen", "detail")
    raise Stale() if flag else Without("a")
"""


def test_the_scan_sees_each_way_of_raising_a_type(tmp_path: Path) -> None:
    (tmp_path / "kernel").mkdir()
    shutil.copy(ROOT / "kernel" / "errors.py", tmp_path / "kernel" / "errors.py")
    (tmp_path / "services" / "demo").mkdir(parents=True)
    (tmp_path / "services" / "demo" / "domain.py").write_text(_MADE_UP_SERVICE)
    found = scan(tmp_path)
    assert {(r.slug, r.statuses) for r in found.raised if r.area == "demo"} == {
        ("plain-new", frozenset({422})),
        ("stale-new", frozenset({409})),
        ("no-a", frozenset({422})),
        ("no-b", frozenset({422})),
        ("handed-new", frozenset({400})),
        ("first-new", frozenset({409})),
        ("second-new", frozenset({409})),
    }
    assert [where.rpartition(" ")[2] for where in found.unresolved] == ["(handler)"]
    assert "refuse" in found.sinks  # hands its parameter on: its callers give the slug
