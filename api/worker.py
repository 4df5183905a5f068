"""The worker process: runs every workflow and activity on the `tempered` task queue.

SIGTERM (and Ctrl-C) shut it down the way Temporal expects: running activities are cancelled,
so an Ansible run stops and removes its private directory (with the SSH key) before the process
exits. Run directories that a killed worker left behind are swept when a worker starts."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities import ansible
from activities.dns import DnsActivities
from activities.inventory import Inventory, decommission_member
from activities.join import JoinActivities
from activities.nodes import NodeActivities, await_machine, reboot_member
from activities.rules import RulesActivities
from activities.sandbox import Sandbox
from activities.terraform import TerraformActivities
from activities.userdata import RenderActivities
from activities.storage import db
from activities.storage.settings import TASK_QUEUE, Settings
from api.worker_metrics import StepTimer, sdk_runtime, serve_worker_metrics
from api.temporal import connect, ensure_search_attributes
from workflows.cluster import ClusterWorkflow
from workflows.machine import MachineWorkflow
from workflows.operation import ClusterOperationWorkflow

WORKFLOWS = [MachineWorkflow, ClusterWorkflow, ClusterOperationWorkflow]
log = logging.getLogger("tempered.worker")


def activities_for(settings: Settings, sandbox: Sandbox) -> list[Callable]:
    """Every activity the workflows call by name (workflows/calls.py), bound to the settings:
    the one list `tempered worker` registers (tests/unit/test_activity_names.py checks the two)."""
    inventory = Inventory(settings.database_url)
    dns = DnsActivities(settings)
    rules = RulesActivities(settings, sandbox)
    render = RenderActivities(settings)
    join = JoinActivities(settings)
    terraform = TerraformActivities(settings)
    nodes = NodeActivities(settings)
    return [
        inventory.admit_machine, inventory.join_plan, inventory.retire_machine, inventory.forget_cluster,
        inventory.cluster_machines, decommission_member,
        dns.publish_node, dns.remove_node, dns.publish_api_name,
        rules.evaluate,
        render.render,
        join.join, join.credentials, join.decommission,
        terraform.run_terraform,
        nodes.drain, nodes.uncordon, nodes.version, reboot_member, await_machine,
    ]


def build(client: Client, settings: Settings, executor: ThreadPoolExecutor, sandbox: Sandbox) -> Worker:
    """A worker with all workflows and activities, bound to the settings' database."""
    db.engine(settings.database_url)  # create the schema before the first activity needs it
    return Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=WORKFLOWS,
        activities=activities_for(settings, sandbox),
        activity_executor=executor,
        interceptors=[StepTimer()],  # tempered_step_duration_seconds
        # a workflow cached on a worker that was killed goes to another one after 3 s (not 10)
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=3),
    )


async def serve(settings: Settings) -> None:
    settings.private_home()
    swept = ansible.sweep(settings)
    if swept:
        log.warning("removing %d run directories left by a worker that did not stop cleanly", len(swept))
    runtime, sdk_metrics = sdk_runtime() if settings.worker_metrics else (None, None)
    client = await connect(settings, runtime=runtime)
    await ensure_search_attributes(client)
    if settings.worker_metrics:
        serve_worker_metrics(settings.worker_metrics, client, sdk_metrics)
    sandbox = Sandbox(workers=2)
    with ThreadPoolExecutor(max_workers=16) as executor:
        worker = build(client, settings, executor, sandbox)
        log.info(
            "worker polling task queue %r on %s (namespace %s)",
            TASK_QUEUE,
            settings.temporal_address,
            settings.temporal_namespace,
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(worker.shutdown()))
        try:
            await worker.run()
        finally:
            sandbox.close()


def main(settings: Settings) -> None:
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
