"""`tempered machine power MACHINE WHAT`: a machine's power settings and power commands.

One command with the machine first (as an operator thinks of it: "this machine: power cycle"),
then what to do. Commands go through the API (POST /v1/machines/ID/power/ACTION), which runs
them on the worker of the machine's site; settings are PUT, the password read from stdin, never
from the command line (it would sit in the shell's history and in `ps`).
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Optional

import typer

from activities.domain.power import POWER_ACTIONS, PowerSettings
from api.cli.client import Exit, Format, OutputOption, call, emit, fail, out, table
from api.cli.clusters import choices, machine_id_of

What = Enum("What", {name: name for name in (*POWER_ACTIONS, "set", "show", "clear")}, type=str)  # type: ignore[misc]
Driver = choices("Driver", PowerSettings.model_fields["driver"].annotation)
COMMAND_TIMEOUT_S = 660  # the API waits up to 10 min (a site without a worker: 2 min)
_SET_FLAGS = {"driver": "--driver", "address": "--address", "username": "--username", "password": "--password-stdin",
              "system_id": "--system-id", "verify_tls": "--no-verify-tls", "site": "--site"}


def machine_power(
    machine_id: str = typer.Argument(..., metavar="MACHINE", help="Its id (as 'tempered machine list' shows it)."),
    what: What = typer.Argument(  # type: ignore[valid-type]
        ..., metavar="WHAT",
        help="on | off | cycle | status | pxe-once: a power command; set | show | clear: its power settings.",
    ),
    driver: Optional[Driver] = typer.Option(  # type: ignore[valid-type]
        None, help="set: redfish, ipmi, qmp (a lab VM's QMP socket) or manual (a person)."),
    address: str = typer.Option("", help="set: redfish: https://BMC; ipmi: host[:port]; qmp: the socket's path."),
    username: str = typer.Option("", help="set: the BMC user."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="set: read the BMC password from stdin (one line); without it, "
        "the stored one stays while driver and address do."),
    system_id: str = typer.Option("", help="set: redfish: the System's path (default: the only one)."),
    site: Optional[str] = typer.Option(
        None, help="set: the site whose worker reaches this BMC ('tempered worker --site NAME' runs it); "
        "none: any worker of the main queue."),
    no_verify_tls: bool = typer.Option(False, "--no-verify-tls", help="set: redfish: do not check the BMC's certificate."),
    output: OutputOption = Format.table,
) -> None:
    """Power a machine on, off, cycle it, ask its state, or make its next boot a PXE boot; or
    set, show and clear how its power is reached.

    Examples:

      tempered machine power MACHINE cycle

      echo "$BMC_PASSWORD" | tempered machine power MACHINE set --driver redfish --address https://10.0.9.21 --username admin --password-stdin --site rack-a

      tempered machine power MACHINE show

      tempered machine power MACHINE clear     (back to manual: a person power-cycles it)

    A machine without settings has manual power: commands answer "power-cycle this machine now".
    The command runs on the worker of the machine's site ('tempered worker --site NAME');
    a BMC that refuses answers with its own words (exit 5), as does one that does not answer.
    """
    machine_id = machine_id_of(machine_id)
    path = f"/v1/machines/{machine_id}/power"
    action = What(what).value
    if action == "show":
        view = call("GET", path)
        emit(view, output, lambda: _print_view(view))
    elif action == "clear":
        call("DELETE", path)
        out.print(f"machine {machine_id}: power settings cleared (manual power)")
    elif action == "set":
        body = _settings(driver, address, username, password_stdin, system_id, site, no_verify_tls)
        view = call("PUT", path, json=body, fields=_SET_FLAGS)
        emit(view, output, lambda: _print_view(view))
    else:
        result = call("POST", f"{path}/{action}", progress=f"power {action} {machine_id}", timeout=COMMAND_TIMEOUT_S)
        emit(result, output, lambda: out.print(
            f"machine {machine_id}: {result['answer']} (driver {result['driver']}, power {result['state']})", markup=False))


def _settings(driver, address: str, username: str, password_stdin: bool, system_id: str, site: str | None,
              no_verify_tls: bool) -> dict:
    """The PUT body; `--driver` is required for `set`, the password comes from stdin only."""
    if driver is None:
        fail(["set needs --driver (redfish, ipmi, qmp or manual)"], Exit.INVALID)
    body = {"driver": Driver(driver).value, "address": address, "username": username, "system_id": system_id,
            "site": site, "verify_tls": not no_verify_tls}
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            fail(["--password-stdin: stdin gave no password"], Exit.INVALID)
        body["password"] = password
    return body


def _print_view(v: dict) -> None:
    table(f"power of {v['machine_id']}", ["driver", "address", "username", "password", "site", "source"], [[
        v["driver"], v["address"], v["username"], "stored" if v["has_password"] else "none", v["site"], v["source"],
    ]])
