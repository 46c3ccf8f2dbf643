"""``hub invoice``: check received e-invoices (Peppol BIS Billing 3.0 / EN 16931) from files."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from services.factures.rules.engine import Finding
from services.factures.schemas import SchemaUnavailable
from services.factures.ubl import MAX_DOCUMENT_BYTES
from services.factures.validation import check_document, is_valid

EXIT_VALID, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2

app = typer.Typer(help="Received e-invoices.", no_args_is_help=True, add_completion=False)


@app.command()
def validate(
    files: Annotated[list[str], typer.Argument(help="UBL invoices or credit notes to check")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line per file")] = False,
) -> None:
    """Report each file's findings; exit 1 if any is invalid, 2 if any cannot be read."""
    console = Console()
    exit_code = EXIT_VALID
    for name in files:
        try:
            data = _read_bounded(name)
        except OSError as error:
            findings = [
                Finding("unreadable", "fatal", f"cannot read: {error.strerror or error}", "/")
            ]
            exit_code = EXIT_UNREADABLE
        else:
            try:
                _, findings = check_document(data)
            except SchemaUnavailable as error:
                typer.echo(f"configuration error: {error}", err=True)
                raise typer.Exit(EXIT_UNREADABLE) from error
            if not is_valid(findings) and exit_code == EXIT_VALID:
                exit_code = EXIT_INVALID
        if as_json:
            typer.echo(json.dumps(_as_json(name, findings)))
        else:
            _print_findings(console, name, findings)
    raise typer.Exit(exit_code)


def _read_bounded(name: str) -> bytes:
    # One byte past the limit is enough for parse_document to refuse a huge file
    # without the CLI reading all of it into memory first.
    with open(name, "rb") as file:
        return file.read(MAX_DOCUMENT_BYTES + 1)


def _as_json(name: str, findings: list[Finding]) -> dict[str, object]:
    return {
        "file": name,
        "valid": is_valid(findings),
        "findings": [finding.as_json() for finding in findings],
    }


def _print_findings(console: Console, name: str, findings: list[Finding]) -> None:
    if not findings:
        console.print(f"[green]✓ {escape(name)}: valid[/green]")
        return
    verdict = "[green]valid, with warnings[/green]" if is_valid(findings) else "[red]invalid[/red]"
    table = Table(title=f"{escape(name)}: {verdict}", title_justify="left")
    for column in ("rule", "flag", "message"):
        table.add_column(column)
    # A cut location is useless for finding the element: wrap it instead.
    table.add_column("location", overflow="fold")
    for finding in findings:
        flag = Text(finding.flag, style="red" if finding.flag == "fatal" else "yellow")
        # Text cells: rule messages contain brackets ("[BR-CO-15]-...") that are not markup.
        table.add_row(Text(finding.rule), flag, Text(finding.message), Text(finding.location))
    console.print(table)
