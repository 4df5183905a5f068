"""The live table of machines: `tempered machine watch`, and the table `tempered lab up` shows.

Both poll the API (the calls of `machine list` and `machine show`), so what they show is what
an operator would see. A row is a pure function of a machine's view and the time; the loop only
fetches, redraws and decides when to stop (Ctrl-C, `--once`, or `--until-ready`: every machine
`ready` gives 0, one `failed:*` gives 1). The lab adds its VMs' columns and stop rules
(api/lab/watch.py) to the same rows and table.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from activities.domain.lifecycle import STATES
from api.cli.client import Exit, call, call_all, fail, out, plural

COLUMNS = ["machine", "cluster", "MAC", "state", "role", "in state", "reason"]

Fetch = Callable[[], list[dict[str, Any]]]


def parse_time(at: str | datetime) -> datetime:
    """An ISO time (Temporal's nanoseconds cut to microseconds), always aware (UTC if naive)."""
    if isinstance(at, datetime):
        when = at
    else:
        text = at.replace("Z", "+00:00")
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)
        when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def seconds_in_state(view: dict[str, Any], now: datetime) -> int | None:
    """Since the machine entered its current state: the latest transition into it in its history."""
    entered = [t for t in view.get("history") or [] if t.get("state") == view.get("state")]
    if not entered:
        return None
    return max(0, int((now - max(parse_time(t["at"]) for t in entered)).total_seconds()))


def age(seconds: int | None) -> str:
    """`42s`, `3m05s`, `2h07m`: how long, at a glance."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass(frozen=True)
class Row:
    machine: str
    mac: str
    firmware: str
    state: str
    role: str
    seconds_in_state: int | None
    reason: str
    web_ui: str
    cluster: str = ""

    def cell(self, column: str) -> str:
        seconds = "" if self.seconds_in_state is None else str(self.seconds_in_state)
        return {
            "machine": self.machine, "cluster": self.cluster, "MAC": self.mac, "firmware": self.firmware,
            "state": self.state, "role": self.role, "s in state": seconds, "in state": age(self.seconds_in_state),
            "reason": self.reason, "Web UI": self.web_ui,
        }[column]


def row(name: str, mac: str, view: dict[str, Any], now: datetime, firmware: str = "") -> Row:
    """A machine's row from its view (`machine show`'s answer)."""
    return Row(
        name, mac, firmware, view.get("state") or "", view.get("role") or "",
        seconds_in_state(view, now), view.get("reason") or "", view.get("temporal_url") or "", view.get("cluster") or "",
    )


def rows(views: list[dict[str, Any]], now: datetime) -> list[Row]:
    return [row(v["id"], ", ".join(v.get("macs") or []), v, now) for v in views]


def render(table_rows: list[Row], title: str, columns: list[str] = COLUMNS, caption: str | None = None) -> Table:
    """The table: failed rows red, ready rows green, `-` in an empty cell."""
    table = Table(title=title, caption=caption)
    for column in columns:
        table.add_column(column, overflow="fold")
    for r in table_rows:
        style = "red" if r.state.startswith("failed:") else "green" if r.state == "ready" else None
        table.add_row(*(r.cell(c) or "-" for c in columns), style=style)  # `-`: nothing, as in every table
    return table


def outcome(table_rows: list[Row]) -> int | None:
    """0 when every machine is ready, 1 when one failed, None while they are on their way."""
    if any(r.state.startswith("failed:") for r in table_rows):
        return 1
    if table_rows and all(r.state == "ready" for r in table_rows):
        return 0
    return None


def state_filter(state: str | None) -> str | None:
    """A `--state` filter, checked against the lifecycle's states (exit 2 naming them): a typo
    would otherwise list "0 machines" as if none were in that state."""
    names = [s.name for s in STATES]
    if state is None or state in names:
        return state
    fail([f"--state {state!r} is not a machine state; one of: {', '.join(names)}"], Exit.INVALID)


def machine_views(cluster: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
    """The machines as `machine show` sees them (state, reason, history, Web UI link). One
    decommissioned (gone) between the list and its fetch is left out, not an error."""
    params = {"cluster": cluster, "state": state_filter(state)}
    listed = call_all("/v1/machines", params=params, fields={"cluster": "--cluster", "state": "--state"})
    views = (call("GET", f"/v1/machines/{m['id']}", missing_ok=True) for m in listed)
    return [v for v in views if v is not None]


def machine_watch(
    cluster: Optional[str] = typer.Option(None, help="Only this cluster's machines."),
    state: Optional[str] = typer.Option(None, help="Only machines in this state (e.g. holding, failed:admit)."),
    interval: float = typer.Option(2.0, help="Seconds between refreshes."),
    once: bool = typer.Option(False, "--once", help="Print the table once and exit (for scripts)."),
    until_ready: bool = typer.Option(
        False, "--until-ready", help="Stop when every machine is ready (exit 0) or one failed (exit 1)."
    ),
) -> None:
    """A live table of machines (state, role, reason, time in state), refreshed until Ctrl-C."""

    def draw() -> tuple[Table, int | None]:
        table_rows = rows(machine_views(cluster, state), datetime.now(timezone.utc))
        return render(table_rows, plural(len(table_rows), "machine")), outcome(table_rows)

    if once:
        out.print(draw()[0])
        return
    raise typer.Exit(live(draw, out, interval, until_ready))


def live(draw: Callable[[], tuple[Table, int | None]], console: Console, interval_s: float, stop: bool) -> int:
    """Redraw until Ctrl-C (0), or, with `stop`, until `draw` gives an outcome (that outcome)."""
    result = 0
    try:
        with Live(console=console, auto_refresh=False) as display:
            while True:
                table, done = draw()
                display.update(table, refresh=True)
                if stop and done is not None:
                    result = done
                    break
                time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    if not console.is_terminal:
        console.line()  # Rich ends the table's last line only on a terminal: not in a log or pipe
    return result
