"""What every operator command shares: the API client, the consoles and how results print.

Operator commands are thin clients of the REST API (so the CLI, scripts and the API see the
same errors); they find it through TEMPERED_API and authenticate with TEMPERED_TOKEN or the
admin token file under TEMPERED_HOME.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from enum import Enum, IntEnum
from pathlib import Path
from typing import Annotated, Any, Callable, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from activities.domain.ids import plural  # noqa: F401  (re-exported: the commands count with it)
from activities.storage import settings as settings_mod

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def setup_logging() -> None:
    """api/logs.py's, imported only by the process commands (it loads FastAPI)."""
    from api.logs import setup_logging as setup

    setup()


class Exit(IntEnum):
    """The exit status of an operator command, by kind of failure: scripts branch on it."""

    OK = 0
    REFUSED = 1  # the API said no: a conflict (409) or another refusal
    INVALID = 2  # bad usage or input: Typer's usage errors, a 422, an unreadable file
    NOT_FOUND = 3  # 404: no such cluster, machine, edge, ...
    NOT_ALLOWED = 4  # no token, a wrong one (401), or one without the right (403)
    UNAVAILABLE = 5  # the API cannot be reached, or what it reaches is down: Temporal, a BMC (502, 503, 504)


EXIT_CODES_HELP = (
    "Exit status: 0 done; 1 refused by the API (e.g. a conflict); 2 bad usage or invalid input; "
    "3 not found; 4 not authenticated or not allowed; 5 the API, Temporal or a BMC unreachable or refusing."
)


def exit_for(status_code: int) -> Exit:
    """The kind of an HTTP error status."""
    if status_code == 422:
        return Exit.INVALID
    if status_code == 404:
        return Exit.NOT_FOUND
    if status_code in (401, 403):
        return Exit.NOT_ALLOWED
    if status_code in (502, 503, 504):
        return Exit.UNAVAILABLE
    return Exit.REFUSED


def _where(loc: list[Any], kind: str = "") -> str:
    """`["body", "servers", 0, "host"]` -> `servers[0].host`: the field as the user wrote it.
    A check of the whole body (`["body"]`, a value_error) names no field: its message says it."""
    parts = list(loc)
    if parts == ["body"]:
        return "" if kind == "value_error" else "request body"
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


Fields = dict[str, str]  # an API field (`quorum_count`, `preflight.min_cores`) -> the command's flag


def _as_flag(where: str, fields: Fields) -> str:
    """The flag the user typed for an API field, from the command's map: `quorum_count` ->
    `--quorum`, `servers[0]` -> `--server[0]`; a field the map does not name stays as it is."""
    for field in sorted(fields, key=len, reverse=True):  # `preflight.min_cores` before `preflight`
        if where == field or where.startswith((field + ".", field + "[")):
            return fields[field] + where[len(field):]
    return where


def problems(status_code: int, body: Any, fields: Fields | None = None) -> list[str]:
    """One line per problem of an error answer: each 422 field as `field: why` (the field named
    as the command's flag where there is one), else `detail`."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if not isinstance(item, dict):
                lines.append(str(item))
                continue
            msg = str(item.get("msg", "")).removeprefix("Value error, ")
            where = _where(item.get("loc") or [], str(item.get("type", "")))
            where = _as_flag(where, fields or {})
            lines.append(f"{where}: {msg}" if where else msg)
        return lines or [f"HTTP {status_code}"]
    text = str(detail).strip() if detail not in (None, "") else ""
    return [text or f"HTTP {status_code}"]


def fail(lines: list[str], code: Exit) -> NoReturn:
    """Print each problem on its own line on stderr and exit with the kind's status."""
    for line in lines:
        err.print(f"[red]error:[/red] {escape(line)}")
    raise typer.Exit(int(code))


def load_settings() -> settings_mod.Settings:
    """The settings, or `error: <which setting is wrong>` and exit 2: every command that needs
    them (operator commands through `call`, the process commands) loads them here."""
    try:
        return settings_mod.load()
    except ValueError as bad:
        fail([str(bad)], Exit.INVALID)


def _token(settings: settings_mod.Settings) -> str:
    """TEMPERED_TOKEN, else the admin token file. An empty TEMPERED_TOKEN (the deployment's
    env file ships `TEMPERED_TOKEN=`) counts as unset, as every other setting does."""
    token = os.environ.get("TEMPERED_TOKEN", "").strip()
    if not token and settings.admin_token_file.exists():
        token = settings.admin_token_file.read_text().strip()
    if not token:
        fail([f"no token: set TEMPERED_TOKEN or run 'tempered up' to create {settings.admin_token_file}"], Exit.NOT_ALLOWED)
    return token


# What to run to see what exists, by resource: a 404 ends with it instead of the API's `see GET ...`.
LIST_HINTS = {
    "cluster": "list them with 'tempered cluster list'",
    "machine": "list them with 'tempered machine list'",
    "edge": "list them with 'tempered edge list'",
    "fragment": "list them with 'tempered fragment list'",
    "token": "list them with 'tempered token list'",
    "dns": "set them with 'tempered dns set'",
    "state": "list them with 'tempered terraform state list'",
}
# The resource of an API path, most specific first (a cluster's DNS settings are DNS settings).
_PATH_RESOURCES = [
    (re.compile(r"^/v1/(clusters/[^/]+/)?dns\b"), "dns"), (re.compile(r"^/v1/clusters\b"), "cluster"),
    (re.compile(r"^/v1/machines\b"), "machine"), (re.compile(r"^/v1/edges\b"), "edge"),
    (re.compile(r"^/v1/cloud-init/fragments\b"), "fragment"), (re.compile(r"^/v1/tokens\b"), "token"),
    (re.compile(r"^/v1/terraform/states\b"), "state"),
]
_NAMED = re.compile(r"\bno (cluster|edge|fragment|token) named\b")
_SEE_API = re.compile(r"[:;,]?\s*see GET /v1/\S+$")


# Paths whose 404 is about something inside a resource: the command that lists those things.
_INNER_HINTS = [
    (re.compile(r"^/v1/clusters/([^/]+)/terraform/"), "see its tasks with 'tempered cluster show {0}'"),
    (re.compile(r"^/v1/terraform/states/([^/]+)/([^/]+)/versions/"),
     "list them with 'tempered terraform state versions {0} {1}'"),
]


def not_found(path: str, message: str) -> str:
    """A 404's message ending with the CLI command that shows what exists. The resource is the
    one the message names (`no cluster named 'x'` on POST /v1/machines), else the path's."""
    for pattern, hint in _INNER_HINTS:
        if (inner := pattern.search(path)) and not _NAMED.search(message):
            text = _SEE_API.sub("", message)
            return f"{text}{'; ' if ':' in text else ': '}{hint.format(*inner.groups())}"
    named = _NAMED.search(message)
    resource = named[1] if named else next((r for pattern, r in _PATH_RESOURCES if pattern.search(path)), None)
    if resource is None:
        return message
    text = _SEE_API.sub("", message)
    separator = "; " if ":" in text else ": "
    return f"{text}{separator}{LIST_HINTS[resource]}"


def not_authenticated(message: str, settings: settings_mod.Settings) -> str:
    """A 401 with where the admin token is and how to use it."""
    source = "TEMPERED_TOKEN" if os.environ.get("TEMPERED_TOKEN", "").strip() else str(settings.admin_token_file)
    return (
        f"{message} (sent from {source}); the admin token is in {settings.admin_token_file}: "
        f"export TEMPERED_TOKEN=$(cat {settings.admin_token_file}), or a token from 'tempered token create'"
    )


def call(
    method: str, path: str, json: Any = None, params: dict | None = None, progress: str = "",
    fields: Fields | None = None, missing_ok: bool = False, timeout: float = 60,
) -> Any:
    """Call the API; on a refusal print its problems one a line and exit with their kind.

    `progress` names a call that waits on a workflow (an update, a close): a spinner on stderr
    says what it waits for (on a terminal only; a pipe or log sees nothing). `fields` maps the
    API's field names to the command's flags where they differ (a 422 then names the flag).
    `missing_ok`: a 404 gives None instead of an error (what vanished meanwhile). `timeout`: for
    calls that wait longer than a minute (a power command waits for a site's worker)."""
    response = _send(method, path, json, params, progress, timeout)
    return _answer(response, path, fields, missing_ok)


def call_all(path: str, params: dict | None = None, fields: Fields | None = None) -> list[Any]:
    """Every row of a paged list route, following its X-Next-Cursor page after page."""
    rows: list[Any] = []
    query = {**(params or {}), "limit": 1000}
    while True:
        response = _send("GET", path, None, query, "", 60)
        rows.extend(_answer(response, path, fields, False) or [])
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            return rows
        query["after"] = cursor


def _send(method: str, path: str, json: Any, params: dict | None, progress: str, timeout: float) -> httpx.Response:
    settings = load_settings()
    token = _token(settings)
    try:
        with err.status(progress) if progress else contextlib.nullcontext():
            return _request(settings, token, method, path, json, params, timeout)
    except httpx.HTTPError as e:
        fail([f"cannot reach the API at {settings.api_url}: {str(e) or type(e).__name__}. Is 'tempered up' running?"], Exit.UNAVAILABLE)


def _answer(response: httpx.Response, path: str, fields: Fields | None, missing_ok: bool) -> Any:
    """The JSON of an answer, or its problems printed and the CLI's exit."""
    if response.status_code == 404 and missing_ok:
        return None
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        lines = problems(response.status_code, body, fields)
        if response.status_code == 404:
            lines = [not_found(path, line) for line in lines]
        elif response.status_code == 401:
            lines = [not_authenticated(line, load_settings()) for line in lines]
        fail(lines, exit_for(response.status_code))
    return response.json() if response.content else None


def _request(
    settings: settings_mod.Settings, token: str, method: str, path: str, json: Any, params: dict | None,
    timeout: float = 60,
) -> httpx.Response:
    return httpx.request(
        method,
        settings.api_url + path,
        json=json,
        params={k: v for k, v in (params or {}).items() if v is not None},
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


def cell(value: Any) -> str:
    """A table cell: `-` for nothing (None or ''), yes/no for a flag, else the value."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def yes_no(value: Any) -> str:
    return "yes" if value else "no"


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[cell(v) for v in row])
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
        fail([f"{file} is not valid YAML: {e}"], Exit.INVALID)


def print_yaml(value: Any) -> None:
    import yaml

    out.print(yaml.safe_dump(value, sort_keys=False).rstrip())
