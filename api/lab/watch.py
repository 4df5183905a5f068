"""The live table `tempered lab up` shows while the lab's machines go from power-on to `ready`.

It polls the API (the same calls as `tempered machine list` and `machine show`), so what it shows
is what an operator would see. The rows are a pure function of the API's answers and the VMs'
specs; the loop around it only fetches, redraws and decides when to stop: every machine `ready`
(exit 0) or one `failed:*` (exit 1, with its reason and the serial console's last lines).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from api.lab.vm import Vm, VmSpec

STANDIN_CAPTION = "kubeadm here is Tempered's stand-in (tests only), not Kubernetes' kubeadm"
NOT_SEEN = "-"  # the state of a VM the control plane has not heard from yet
COLUMNS = ["machine", "MAC", "firmware", "state", "role", "s in state", "reason", "Web UI"]

Fetch = Callable[[], list[dict[str, Any]]]


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

    def cells(self) -> list[str]:
        seconds = "" if self.seconds_in_state is None else str(self.seconds_in_state)
        return [self.machine, self.mac, self.firmware, self.state, self.role, seconds, self.reason, self.web_ui]


def _parse(at: str) -> datetime:
    when = datetime.fromisoformat(at.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def seconds_in_state(view: dict[str, Any], now: datetime) -> int | None:
    """Since the machine entered its current state: the latest transition into it in its history."""
    entered = [t for t in view.get("history") or [] if t.get("state") == view.get("state")]
    if not entered:
        return None
    return max(0, int((now - max(_parse(t["at"]) for t in entered)).total_seconds()))


def rows(machines: list[dict[str, Any]], specs: list[VmSpec], now: datetime) -> list[Row]:
    """One row per lab VM, matched to its machine by MAC (a VM not heard from yet shows `-`),
    then any other machine of the cluster."""
    by_mac = {mac: view for view in machines for mac in view.get("macs") or []}
    made, matched = [], set()
    for spec in specs:
        view = by_mac.get(spec.mac)
        if view is None:
            made.append(Row(spec.name, spec.mac, spec.firmware, NOT_SEEN, "", None, "no PXE contact yet", ""))
            continue
        matched.add(view["id"])
        made.append(_row(spec.name, spec.mac, spec.firmware, view, now))
    for view in machines:
        if view["id"] not in matched:
            made.append(_row(view.get("node_name") or view["id"], ", ".join(view.get("macs") or []), "", view, now))
    return made


def _row(name: str, mac: str, firmware: str, view: dict[str, Any], now: datetime) -> Row:
    return Row(
        name, mac, firmware, view.get("state") or "", view.get("role") or "",
        seconds_in_state(view, now), view.get("reason") or "", view.get("temporal_url") or "",
    )


def outcome(table_rows: list[Row]) -> int | None:
    """0 when every machine is ready, 1 when one failed, None while they are on their way."""
    if any(row.state.startswith("failed:") for row in table_rows):
        return 1
    if table_rows and all(row.state == "ready" for row in table_rows):
        return 0
    return None


def render(table_rows: list[Row], title: str = "lab machines") -> Table:
    """The table; its caption names the kubeadm stand-in, which the lab's nodes run."""
    table = Table(title=title, caption=STANDIN_CAPTION)
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for row in table_rows:
        style = "red" if row.state.startswith("failed:") else "green" if row.state == "ready" else None
        table.add_row(*row.cells(), style=style)
    return table


def api_fetch(cluster: str) -> Fetch:
    """The cluster's machines as `machine show` sees them (state, reason, history, Web UI link)."""
    from api.cli.client import call

    def fetch() -> list[dict[str, Any]]:
        listed = call("GET", "/v1/machines", params={"cluster": cluster})
        return [call("GET", f"/v1/machines/{m['id']}") for m in listed]

    return fetch


def watch(
    vms: list[Vm],
    fetch: Fetch,
    console: Console | None = None,
    interval_s: float = 2.0,
    timeout_s: float | None = None,
) -> int:
    """Redraw the table until the lab is done: 0 all ready, 1 one failed (or the timeout)."""
    console = console or Console()
    specs = [vm.spec for vm in vms]
    started = time.monotonic()
    with Live(console=console, auto_refresh=False) as live:
        while True:
            table_rows = rows(fetch(), specs, datetime.now(timezone.utc))
            live.update(render(table_rows), refresh=True)
            result = outcome(table_rows)
            if result is not None:
                break
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                console.print(f"[red]not every machine was ready within {timeout_s:.0f}s[/red]")
                return 1
            time.sleep(interval_s)
    if result == 1:
        _report_failures(table_rows, vms, console)
    return result


def _report_failures(table_rows: list[Row], vms: list[Vm], console: Console) -> None:
    by_name = {vm.spec.name: vm for vm in vms}
    for row in table_rows:
        if not row.state.startswith("failed:"):
            continue
        console.print(f"[red]{row.machine} {row.state}[/red]: {row.reason}")
        if row.machine in by_name:
            console.rule(f"{row.machine}: serial console (last lines)")
            console.print(by_name[row.machine].console_tail(), markup=False, highlight=False)
