"""What every operator command shares: the API client, the consoles and how results print.

Operator commands are thin clients of the REST API (so the CLI, scripts and the API see the
same errors); they find it through TEMPERED_API and authenticate with TEMPERED_TOKEN or the
admin token file under TEMPERED_HOME.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable

import httpx
import typer
from rich.console import Console
from rich.table import Table

from activities.storage import settings as settings_mod

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def setup_logging() -> None:
    """api/logs.py's, imported only by the process commands (it loads FastAPI)."""
    from api.logs import setup_logging as setup

    setup()


def call(method: str, path: str, json: Any = None, params: dict | None = None) -> Any:
    """Call the API; print its error and exit non-zero when it refuses."""
    settings = settings_mod.load()
    token = os.environ.get("TEMPERED_TOKEN")
    if token is None and settings.admin_token_file.exists():
        token = settings.admin_token_file.read_text().strip()
    if not token:
        err.print(f"[red]no token[/red]: set TEMPERED_TOKEN or run 'tempered up' to create {settings.admin_token_file}")
        raise typer.Exit(2)
    try:
        response = httpx.request(
            method,
            settings.api_url + path,
            json=json,
            params={k: v for k, v in (params or {}).items() if v is not None},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
    except httpx.HTTPError as e:
        err.print(f"[red]cannot reach the API at {settings.api_url}[/red]: {e}. Is 'tempered up' running?")
        raise typer.Exit(2) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        err.print(f"[red]{response.status_code}[/red] {detail}")
        raise typer.Exit(1)
    return response.json() if response.content else None


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    out.print(table)


class Format(str, Enum):
    """How a read command prints: a table for people, JSON or YAML for scripts."""

    table = "table"
    json = "json"
    yaml = "yaml"


OutputOption = Annotated[
    Format, typer.Option("--output", "-o", help="table (the default), or json / yaml: the API's answer, for scripts.")
]


def emit(value: Any, output: Format, render: Callable[[], None]) -> None:
    """Print a read command's answer: `render()` draws the table; json and yaml print the API's
    answer itself, unstyled on stdout, so `-o json | jq` sees exactly what the API said."""
    if output is Format.json:
        sys.stdout.write(json.dumps(value, indent=2) + "\n")
    elif output is Format.yaml:
        import yaml

        sys.stdout.write(yaml.safe_dump(value, sort_keys=False))
    else:
        render()


def read_yaml(file: Path) -> Any:
    """A YAML (or JSON) file the user passed; exit 2 with the parser's reason when it is not."""
    import yaml

    try:
        return yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        err.print(f"[red]{file} is not valid YAML[/red]: {e}")
        raise typer.Exit(2) from None


def print_yaml(value: Any) -> None:
    import yaml

    out.print(yaml.safe_dump(value, sort_keys=False).rstrip())
