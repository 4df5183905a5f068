"""The live table `tempered lab up` shows while the lab's machines go from power-on to `ready`.

It polls the API (the same calls as `tempered machine list` and `machine show`), so what it shows
is what an operator would see. The rows are a pure function of the API's answers and the VMs'
specs; the loop around it only fetches, redraws and decides when to stop: every machine `ready`
(exit 0), one `failed:*` (exit 1, with its reason and the serial console's last lines), or a VM
that made no PXE contact within `pxe_timeout_s` of power-on (exit 1, the same way): such a VM
never reaches the control plane, so without that bound the table would wait out the whole
--timeout on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from api.cli.watch import Fetch, Row, machine_views, outcome, parse_time, seconds_in_state
from api.cli.watch import row as make_row
from api.cli.watch import render as render_table
from api.lab.vm import Vm, VmSpec

__all__ = ["NOT_SEEN", "STANDIN_CAPTION", "Row", "never_booted", "outcome", "render", "rows", "seconds_in_state", "watch"]

STANDIN_CAPTION = "kubeadm here is Tempered's stand-in (tests only), not Kubernetes' kubeadm"
NOT_SEEN = "-"  # the state of a VM the control plane has not heard from yet
# Power-on to the first PXE contact took 2-20 s under TCG (README, Lab VMs); three VMs on two
# cores, UEFI's slower firmware and a loaded host stay far inside this.
PXE_TIMEOUT_S = 180.0
COLUMNS = ["machine", "MAC", "firmware", "state", "role", "s in state", "reason", "Web UI"]


def heard_since(view: dict[str, Any], powered_on: datetime | None) -> bool:
    """Whether the machine's history has an entry at or after the VM's last power-on.

    After a plain `lab down` the control plane keeps its databases, so on the next `lab up`
    every machine is still `ready` from the boot before; only a transition of this boot says
    the VM made contact again. Without a recorded power-on, any machine counts as heard from."""
    if powered_on is None:
        return True
    return any(parse_time(t["at"]) >= powered_on for t in view.get("history") or [])


def rows(
    machines: list[dict[str, Any]], specs: list[VmSpec], now: datetime,
    powered_on: dict[str, datetime | None] | None = None,
) -> list[Row]:
    """One row per lab VM, matched to its machine by MAC (a VM not heard from since its
    power-on, `powered_on` by VM name, shows `-`), then any other machine of the cluster."""
    by_mac = {mac: view for view in machines for mac in view.get("macs") or []}
    made, matched = [], set()
    for spec in specs:
        view = by_mac.get(spec.mac)
        if view is not None:
            matched.add(view["id"])
        if view is None or not heard_since(view, (powered_on or {}).get(spec.name)):
            made.append(Row(spec.name, spec.mac, spec.firmware, NOT_SEEN, "", None, "no PXE contact yet", ""))
            continue
        made.append(make_row(spec.name, spec.mac, view, now, spec.firmware))
    for view in machines:
        if view["id"] not in matched:
            made.append(make_row(view.get("node_name") or view["id"], ", ".join(view.get("macs") or []), view, now))
    return made


def never_booted(table_rows: list[Row], waited_s: float, bound_s: float | None) -> list[Row]:
    """The lab VMs the control plane has not heard from `bound_s` after they were powered on."""
    if bound_s is None or waited_s <= bound_s:
        return []
    return [r for r in table_rows if r.state == NOT_SEEN]


def render(table_rows: list[Row], title: str = "lab machines") -> Table:
    """`tempered machine watch`'s table with the VMs' columns; its caption names the kubeadm
    stand-in, which the lab's nodes run."""
    return render_table(table_rows, title, COLUMNS, caption=STANDIN_CAPTION)


def api_fetch(cluster: str) -> Fetch:
    """The cluster's machines as `machine show` sees them (state, reason, history, Web UI link)."""
    return lambda: machine_views(cluster)


def watch(
    vms: list[Vm],
    fetch: Fetch,
    console: Console | None = None,
    interval_s: float = 2.0,
    timeout_s: float | None = None,
    pxe_timeout_s: float | None = PXE_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Redraw the table until the lab is done: 0 all ready; 1 one failed, one VM never PXE
    booted, or the timeout. The VMs were powered on just before the watch starts."""
    console = console or Console()
    specs = [vm.spec for vm in vms]
    powered_on = {vm.spec.name: vm.powered_on() for vm in vms}
    started = clock()
    silent: list[Row] = []
    with Live(console=console, auto_refresh=False) as live:
        while True:
            table_rows = rows(fetch(), specs, datetime.now(timezone.utc), powered_on)
            live.update(render(table_rows), refresh=True)
            result = outcome(table_rows)
            if result is not None:
                break
            waited = clock() - started
            if silent := never_booted(table_rows, waited, pxe_timeout_s):
                break
            if timeout_s is not None and waited > timeout_s:
                console.print(f"[red]not every machine was ready within {timeout_s:.0f}s[/red]")
                return 1
            time.sleep(interval_s)
    if not console.is_terminal:
        console.line()  # Rich ends the table's last line only on a terminal: not in a log or pipe
    by_name = {vm.spec.name: vm for vm in vms}
    for row in silent:
        _report_no_pxe(row, by_name[row.machine], pxe_timeout_s or 0, console)
    if silent:
        return 1
    if result == 1:
        _report_failures(table_rows, by_name, console)
    return result


def _report_no_pxe(row: Row, vm: Vm, bound_s: float, console: Console) -> None:
    """One line naming the VM, its MAC and where to look; then its console, as for failed:*."""
    logs = vm.dir.parent.parent / "logs"
    qemu = "its QEMU is not running" if vm.pid() is None else "its QEMU runs"
    console.print(
        f"[red]{row.machine} ({row.mac}) made no PXE contact within {bound_s:.0f}s of power-on[/red] ({qemu}): "
        f"see its console below (tempered lab console {row.machine}), the site DHCP's {logs}/site-dhcp.log "
        f"and the edge's {logs}/edge.log",
        soft_wrap=True,
    )
    _print_console(vm, console)


def _report_failures(table_rows: list[Row], by_name: dict[str, Vm], console: Console) -> None:
    for row in table_rows:
        if not row.state.startswith("failed:"):
            continue
        console.print(f"[red]{row.machine} {row.state}[/red]: {row.reason}")
        if row.machine in by_name:
            _print_console(by_name[row.machine], console)


def _print_console(vm: Vm, console: Console) -> None:
    console.rule(f"{vm.spec.name}: serial console (last lines)")
    console.print(vm.console_tail() or "(nothing on it yet)", markup=False, highlight=False)
