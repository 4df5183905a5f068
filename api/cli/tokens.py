"""`tempered token` and `tempered audit`: named tokens with a role, and the trail of what they did."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from enum import Enum
from typing import Optional

import typer

from api.cli.client import Exit, Format, OutputOption, call, emit, err, fail, out, table

token_app = typer.Typer(help="Create, list and revoke operator tokens (viewer, operator, admin).", no_args_is_help=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Role(str, Enum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"


_ROLE_HELP = "viewer: reads; operator: also clusters, machines, rules, fragments; admin: also tokens, DNS, edges."


def seconds(duration: str) -> int:
    """'30d', '12h', '45m', '90s' or a bare number of seconds, as seconds; exit 2 otherwise."""
    match = re.fullmatch(r"(\d+)([smhdw]?)", duration.strip())
    if match is None:
        err.print(f"[red]--expires-in {duration!r}[/red]: a number with a unit, e.g. 90m, 12h, 30d or 2w")
        raise typer.Exit(2)
    return int(match[1]) * _UNITS[match[2] or "s"]


@token_app.command("create")
def token_create(
    name: str = typer.Argument(..., help="A unique DNS label naming the token, e.g. ci-deploy."),
    role: Role = typer.Option(..., "--role", help=_ROLE_HELP),
    expires_in: Optional[str] = typer.Option(None, "--expires-in", help="Lifetime, e.g. 12h, 30d, 2w. Default: none."),
    output: OutputOption = Format.table,
) -> None:
    """Create a token and print it: it is shown this once, only its digest is kept."""
    body = {"name": name, "role": role.value, "expires_in_seconds": seconds(expires_in) if expires_in else None}
    v = call("POST", "/v1/tokens", json=body, fields={"name": "NAME", "role": "--role", "expires_in_seconds": "--expires-in"})

    def render() -> None:
        out.print(f"token [bold]{v['name']}[/bold] created: role {v['role']}, expires {v['expires_at'] or 'never'}")
        out.print("token (shown once; use it as TEMPERED_TOKEN):")
        out.print(v["token"], highlight=False)

    emit(v, output, render)


@token_app.command("list")
def token_list(output: OutputOption = Format.table) -> None:
    """List operator tokens: name, role, when each was created and when it expires."""
    rows = call("GET", "/v1/tokens")
    emit(rows, output, lambda: table("tokens", ["name", "role", "created", "expires"], [
        [t["name"], t["role"], t["created_at"], (t["expires_at"] or "never") + (" (expired)" if t["expired"] else "")]
        for t in rows
    ]))


@token_app.command("revoke")
def token_revoke(name: str = typer.Argument(..., help="The token's name.")) -> None:
    """Revoke a token: the next call made with it is refused (401)."""
    call("DELETE", f"/v1/tokens/{name}")
    out.print(f"token {name} revoked")


def since_time(text: str) -> str:
    """`--since` as the API takes it (ISO 8601; a date alone is its midnight UTC), checked here
    so that a wrong one says the format rather than a 422 on a query parameter."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        fail([f"--since {text!r} is not a date or time: give e.g. 2026-12-01 or 2026-12-01T09:00:00Z (UTC unless it says)"], Exit.INVALID)
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat()


def audit(
    limit: int = typer.Option(50, "--limit", "-n", help="At most this many entries, newest first."),
    since: Optional[str] = typer.Option(None, "--since", help="Only calls at or after this time: 2026-12-01 or 2026-12-01T09:00:00Z (UTC unless it says)."),
    actor: Optional[str] = typer.Option(None, "--actor", help="Only calls made with this token name."),
    output: OutputOption = Format.table,
) -> None:
    """Show the audit trail: every mutating call, who made it, and what it was answered."""
    params = {"limit": limit, "since": since_time(since) if since else None, "actor": actor}
    rows = call("GET", "/v1/audit", params=params)
    emit(rows, output, lambda: table("audit", ["at", "token", "role", "call", "params", "status"], [
        [e["at"], e["actor"] or "(none)", e["role"], f"{e['method']} {e['route']}",
         " ".join(f"{k}={v}" for k, v in e["params"].items()), e["status"]]
        for e in rows
    ]))
