"""The `tempered` command: run the control plane's processes, and operate clusters and machines.

This module puts the command together: the processes (processes.py) at the top level and one
group per resource (clusters.py, edges.py, rules.py, dns.py), all thin clients of the REST API
through client.py. `main` is the console script; `python -m api.cli` runs it too (api/stack.py
starts the processes that way).
"""

from __future__ import annotations

import typer

from api.cli import processes
from api.cli.client import EXIT_CODES_HELP
from api.cli.help import plain_help
from api.cli.clusters import cluster_app, machine_app
from api.cli.dns import dns_app
from api.cli.edges import edge_app, image_app
from api.cli.power import machine_power
from api.cli.rules import fragment_app, rules_app
from api.cli.terraform import terraform_app
from api.cli.tokens import audit, token_app
from api.lab.cli import lab_app

plain_help()  # no <bool>/<str> tags in any --help (see help.py)
app = typer.Typer(
    help="Tempered: turn racks of bare metal into Kubernetes clusters.\n\n"
    "Start everything on this machine with 'tempered up', then create a cluster with "
    "'tempered cluster create NAME' and PXE boot its machines.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    rich_markup_mode="rich",
)
for group, name in (
    (cluster_app, "cluster"), (machine_app, "machine"), (edge_app, "edge"), (dns_app, "dns"),
    (image_app, "image"), (rules_app, "rules"), (fragment_app, "fragment"), (lab_app, "lab"),
    (token_app, "token"), (terraform_app, "terraform"),
):
    app.add_typer(group, name=name)
machine_app.command("power")(machine_power)
for command in (processes.up, processes.temporal, processes.worker, processes.api, processes.bootedge):
    app.command()(command)
app.command()(audit)


def main() -> None:
    app()
