"""The worker process: runs every workflow and activity on the `tempered` task queue.

Power commands run on a task queue per site (`tempered-site-<site>`), where a worker that
reaches the site's BMCs serves them: `tempered worker --site NAME` serves that queue only, with
the power activities only (no workflows, no sandbox: the MAAS rack pattern), and the default
worker also serves the sites named in TEMPERED_WORKER_SITES.

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
from temporalio.worker import PollerBehaviorSimpleMaximum, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import ansible
from activities.dns import DnsActivities
from activities.inventory import Inventory, decommission_member
from activities.join import JoinActivities
from activities.domain.power import site_queue
from activities.power.activity import PowerActivities
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
from workflows.power import PowerCommandWorkflow

WORKFLOWS = [MachineWorkflow, ClusterWorkflow, ClusterOperationWorkflow, PowerCommandWorkflow]
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
    power = PowerActivities(settings)
    nodes = NodeActivities(settings)
    return [
        inventory.admit_machine, inventory.join_plan, inventory.retire_machine, inventory.forget_cluster,
        inventory.cluster_machines, inventory.record_roles, inventory.record_state, decommission_member,
        dns.publish_node, dns.remove_node, dns.publish_api_name,
        rules.evaluate, rules.evaluate_batch,
        render.render,
        join.join, join.credentials, join.decommission,
        terraform.run_terraform,
        power.power_target, power.power_machine,
        nodes.drain, nodes.uncordon, nodes.version, reboot_member, await_machine,
    ]


def power_activities(settings: Settings) -> list[Callable]:
    """What a site's queue serves: the power command alone (the main queue answers `power_target`)."""
    return [PowerActivities(settings).power_machine]


def build_site(client: Client, settings: Settings, executor: ThreadPoolExecutor, site: str) -> Worker:
    """A worker on one site's queue, running only its power commands."""
    return Worker(
        client, task_queue=site_queue(site), activities=power_activities(settings), activity_executor=executor,
        interceptors=[StepTimer()],
    )


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
        workflow_runner=RUNNER,
        **workflow_tuning(settings),
    )


# The sandbox imports a workflow's modules afresh for every workflow it runs, so a fleet of new
# machine workflows re-executed workflows/* a thousand times: 75% of the worker's samples at
# 1,000 machines, each new workflow's first task (its boot answer) waiting on it. The project's
# own workflow modules hold constants and code only (no state that one run could leave to the
# next), so they are passed through, imported once; everything else stays sandboxed. The
# workflow tests (tests/workflow/conftest.py) and the replay of recorded histories run them
# under the full sandbox, which is where a non-deterministic call in them is caught.
RUNNER = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows"))


def workflow_tuning(settings: Settings) -> dict:
    """How many workflow tasks the worker asks for and runs at once, and how many workflows it
    keeps. The SDK's defaults (5 pollers, a fifth of them on the task queue, 100 tasks at once,
    1,000 cached workflows) left one poller for the first task of every new machine workflow:
    at 1,000 machines booting together, edge boot answers waited 15 s on average for a poll
    while the worker's slots sat free (issue 18). Half the pollers serve the task queue (new
    workflows, and workflows not cached here), half this worker's sticky queue. Workflow code
    holds the GIL, so 100 tasks at once only slowed each one past Temporal's workflow task
    timeout (10 s) on a busy host; fewer run at once and each finishes. The cache holds a
    fleet's workflows, since an evicted one is replayed from its whole history on its next task."""
    return {
        "workflow_task_poller_behavior": PollerBehaviorSimpleMaximum(settings.worker_workflow_pollers),
        "max_concurrent_workflow_tasks": settings.worker_workflow_tasks,
        "nonsticky_to_sticky_poll_ratio": 0.5,  # (of the pollers, the task queue's share)
        "max_cached_workflows": settings.worker_cached_workflows,
        # A cached workflow's task not taken from this worker's sticky queue in this time goes
        # to the task queue, replayed there from its whole history (by another worker, if this
        # one was killed): 3 s (the value before) timed out 765 tasks of a loaded run at 1,000
        # machines, each then waiting again at the back of the task queue.
        "sticky_queue_schedule_to_start_timeout": timedelta(seconds=settings.worker_sticky_timeout_s),
    }


async def serve_site(settings: Settings, site: str) -> None:
    """`tempered worker --site NAME`: the site's power queue only. It needs Temporal and the
    database (the sealed settings and the key that opens them), nothing else."""
    settings.private_home()
    client = await connect(settings)
    db.engine(settings.database_url)
    with ThreadPoolExecutor(max_workers=8) as executor:
        await _run(build_site(client, settings, executor, site), f"site {site}: task queue {site_queue(site)!r}", settings)


async def _run(worker: Worker, what: str, settings: Settings, *others: Worker) -> None:
    """Run `worker` (and `others` alongside) until SIGTERM or Ctrl-C shuts them all down."""
    log.info("worker polling %s on %s (namespace %s)", what, settings.temporal_address, settings.temporal_namespace)
    loop = asyncio.get_running_loop()
    everyone = (worker, *others)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: [asyncio.ensure_future(w.shutdown()) for w in everyone])
    await asyncio.gather(*(w.run() for w in everyone))


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
        sites = [build_site(client, settings, executor, site) for site in settings.worker_sites]
        queues = ", ".join([repr(TASK_QUEUE), *(repr(site_queue(site)) for site in settings.worker_sites)])
        try:
            await _run(worker, f"task queues {queues}", settings, *sites)
        finally:
            sandbox.close()


def main(settings: Settings, site: str | None = None) -> None:
    try:
        asyncio.run(serve_site(settings, site) if site else serve(settings))
    except KeyboardInterrupt:
        pass
