"""`tempered lab`: the Typer sub-app. Thin: the work is in api/lab/lab.py."""

from __future__ import annotations

from typing import Optional

import typer

from api.cli.client import err, out
from api.lab import vm_cli

lab_app = typer.Typer(
    help="A whole lab on this machine (root): namespaces, a bridge, the site's DHCP and DNS, "
    "the control plane, a boot edge and QEMU machines.",
    no_args_is_help=True,
)


@lab_app.command("up")
def up(
    machines: int = typer.Option(3, "--machines", "-n", min=0, max=16, help="How many QEMU machines (0: none)."),
    no_vms: bool = typer.Option(False, "--no-vms", help="Everything but the VMs (same as --machines 0)."),
    firmware: str = typer.Option(
        "", help="Firmware of the machines in turn: bios, uefi (comma-separated). Default: the lab's mix, "
        "BIOS, UEFI, a two-disk BIOS, then in turn."
    ),
    control_plane: Optional[str] = typer.Option(
        None, "--control-plane", help="Use this running stack's API (started with 'tempered up') instead of the lab's own."
    ),
    api_port: int = typer.Option(8100, help="The lab's API port (its Temporal on 7300, Web UI on 8300)."),
    temporal_port: int = typer.Option(7300, help="The lab's Temporal port; its Web UI on this + 1000."),
    dns_port: int = typer.Option(5300, help="The lab's BIND port on 127.0.0.1."),
    detach: bool = typer.Option(False, "--detach", help="Return once the machines are started (no live table)."),
    timeout: int = typer.Option(3600, help="Seconds the live table waits for every machine to be ready."),
    pxe_timeout: int = typer.Option(
        180, min=0, help="Seconds a machine may take from power-on to its first PXE contact before the live table "
        "gives up (0: wait the whole --timeout)."
    ),
    simulate: int = typer.Option(
        0, "--simulate", min=0, max=100000, help="Instead of VMs, N simulated machines: the control plane only (no "
        "QEMU), driven by the fleet simulator with the calls the edge, the discovery agent and cloud-init make, "
        "joined from outside (join_method external); progress while it runs, the result table at the end. "
        "Exit 0 when every machine is ready within --timeout.",
    ),
    clusters: int = typer.Option(1, "--clusters", min=1, max=1000, help="With --simulate: how many clusters (each "
                                 "with a catch-all edge of its own) the machines are dealt to."),
    window: float = typer.Option(10.0, "--window", min=0, help="With --simulate: seconds over which the machines power on."),
    poll: float = typer.Option(10.0, "--poll", min=0.1, help="With --simulate: the agent's instruction interval "
                               "(10 s in the discovery image); the fleet's list is read every --poll "
                               "seconds, or every 5 s if that is sooner."),
) -> None:
    """Build the lab from real parts, each started here and recorded by PID in $TEMPERED_HOME/lab/lab.json."""
    from api.lab import lab
    from api.lab.control import Ports

    opts = lab.Options(
        machines=0 if no_vms or simulate else machines,
        firmware=tuple(f.strip() for f in firmware.split(",") if f.strip()),
        ports=Ports(api=api_port, temporal=temporal_port), dns_port=dns_port, control_plane=control_plane,
    )
    try:
        state = lab.up(opts, say=lambda line: err.print(f"[dim]starting {line}...[/dim]"))
    except lab.LabError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    lab.status(say=out.print)
    _where(state, "The lab is up.")
    if simulate:
        code = _simulate(state, simulate, clusters, window, poll, timeout)
        _where(state, "The lab is still up.")
        raise typer.Exit(code)
    if opts.machines and not detach:
        code = _watch(state, opts, timeout, pxe_timeout)
        _where(state, "The lab is still up.")
        raise typer.Exit(code)


def _where(state, headline: str) -> None:
    """The Web UI and the stop command, said before the live table (open the UI while it runs)
    and again after it, where the user looks last."""
    from api.lab import lab

    out.print(f"[bold]{headline} Temporal Web UI: {state.ui_url}[/bold]", soft_wrap=True)
    out.print(f"Stop it with: {lab.stop_command()}   (add --purge to also remove the VMs' disks and the lab's state)",
              soft_wrap=True)


def _watch(state, opts, timeout: int, pxe_timeout: int) -> int:
    """The live table until every machine is ready (0) or one failed or never PXE booted (1,
    with its console); Ctrl-C leaves the table, not the lab (130)."""
    import os

    from api.lab import cluster, lab, vm, watch

    os.environ.update(lab.client_env(state))  # the CLI's client, pointed at this lab's API
    vms = [vm.Vm(spec, state.dir / "vms" / spec.name) for spec in lab.plan_vms(opts)]
    try:
        return watch.watch(vms, watch.api_fetch(cluster.NAME), out, timeout_s=timeout, pxe_timeout_s=pxe_timeout or None)
    except KeyboardInterrupt:
        return 130


def _simulate(state, machines: int, clusters: int, window: float, poll: float, timeout: int) -> int:
    """The fleet simulator against the lab's API (or the stack given with --control-plane): 0
    when every machine is ready, 1 otherwise (the table says where the others are stuck)."""
    import asyncio
    import os

    from api.lab import fleet, lab

    token = lab.client_env(state).get("TEMPERED_TOKEN") or os.environ.get("TEMPERED_TOKEN", "")
    plan = fleet.Plan(machines=machines, clusters=clusters, window_s=window, poll_s=poll, timeout_s=timeout)
    err.print(f"simulating {machines} machines in {clusters} clusters ({plan.name}-c0...) against {state.api_url}")
    try:
        result = asyncio.run(fleet.run(state.api_url, token, plan, progress=lambda line: err.print(line, highlight=False)))
    except KeyboardInterrupt:
        return 130
    for line in fleet.report(result):
        out.print(line, highlight=False, soft_wrap=True)
    return 0 if len(result.ready) == machines else 1


@lab_app.command("status")
def status() -> None:
    """What is up: namespaces, processes, the API and Web UI, the cluster. Exit 1 unless whole."""
    from api.lab import lab

    raise typer.Exit(0 if lab.status(say=out.print) else 1)


@lab_app.command("down")
def down(purge: bool = typer.Option(False, "--purge", help="Also remove disks, images and the lab's control-plane state.")) -> None:
    """Stop every process of the lab by PID and delete its namespaces (bridge and veths go with them)."""
    import os

    from api.lab import lab

    if os.geteuid() != 0:
        err.print("[red]tempered lab needs root (network namespaces): run it with sudo[/red]")
        raise typer.Exit(1)
    left = lab.down(purge=purge)
    if left:
        err.print(f"[red]could not remove: {', '.join(left)}[/red]")
        raise typer.Exit(1)
    out.print("the lab is down" + (" and purged" if purge else ""))


@lab_app.command("timings")
def timings(as_json: bool = typer.Option(False, "--json", help="The figures as JSON, one object per machine.")) -> None:
    """Per machine: seconds from power-on to each state, and power-on to ready split into the VM's
    seconds and the control plane's (edge answers, workflow tasks, admission, rendering, Ansible, DNS)."""
    import json
    import os
    from datetime import datetime, timezone

    from rich.console import Console

    from api.lab import cluster, lab, timings as timings_mod, watch
    from api.lab import state as state_mod

    state = state_mod.load()
    if state is None or not state.api_url:
        err.print("[red]no lab is up[/red]: tempered lab up first")
        raise typer.Exit(1)
    os.environ.update(lab.client_env(state))
    address = timings_mod.temporal_address(state.ui_url, state.external_control_plane)
    figures = timings_mod.collect(state.dir, watch.api_fetch(cluster.NAME)(), address, datetime.now(timezone.utc))
    if as_json:
        out.print_json(json.dumps([t.as_dict() for t in figures]))
        return
    wide = out if out.is_terminal else Console(width=200)  # a file or a pipe gets the whole table
    for table in timings_mod.render(figures):
        wide.print(table)


vm_cli.register(lab_app)  # console MACHINE, power MACHINE on|off|cycle|status
