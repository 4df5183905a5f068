"""Talking to Temporal from outside a workflow: the API, the CLI, the boot edge and the worker.

One place knows how to connect (address, namespace, the Pydantic converter), how to register
the search attributes, and how to start or reach a machine's or a cluster's workflow, so every
caller starts them the same way.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import TLSConfig
from temporalio.runtime import Runtime

from activities.domain.cluster import ClusterStatus
from activities.domain.ids import cluster_workflow_id, machine_workflow_id
from activities.domain.machine import BootInstruction, BootRequest, MachineStatus
from activities.storage import machinestate
from activities.storage.models import utcnow
from activities.storage.settings import TASK_QUEUE, Settings
from workflows import metadata, search
from workflows.cluster import ClusterWorkflow
from workflows.machine import MachineWorkflow

log = logging.getLogger("tempered.temporal")


class TemporalSettingsError(RuntimeError):
    """TEMPORAL_* settings that cannot work as given (a TLS file missing, half a key pair)."""

# How long an API call waits for a worker to answer a query or an Update before it says so.
ANSWER_TIMEOUT = timedelta(seconds=20)
# The edge's boot question: under the edge's own 15 s, so a slow answer is a 504 the edge turns
# into "ask again", not a request it abandoned while its machine's workflow still answers.
BOOT_ANSWER_TIMEOUT = timedelta(seconds=12)


def _pem(setting: str, path: Path, marker: bytes = b"-----BEGIN ") -> bytes:
    """A PEM file named by a TEMPORAL_TLS_* setting, or an error that names the setting."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TemporalSettingsError(f"{setting}={path}: cannot read it ({err.strerror})") from None
    if marker not in data:
        raise TemporalSettingsError(f"{setting}={path}: not a PEM file (no '-----BEGIN' line)")
    return data


def tls_config(settings: Settings) -> TLSConfig | bool:
    """TLS to Temporal from TEMPORAL_TLS_*: False (plain gRPC, the dev server) unless TLS is
    asked for; the system's CAs when TEMPORAL_TLS_CA is not given; mutual TLS with a client
    certificate and key, which come as a pair."""
    if not settings.temporal_tls_enabled:
        return False
    cert, key = settings.temporal_tls_cert, settings.temporal_tls_key
    if (cert is None) != (key is None):
        raise TemporalSettingsError(
            "TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together (mutual TLS): set both or neither"
        )
    ca = settings.temporal_tls_ca
    return TLSConfig(
        server_root_ca_cert=_pem("TEMPORAL_TLS_CA", ca) if ca else None,
        domain=settings.temporal_tls_server_name,
        client_cert=_pem("TEMPORAL_TLS_CERT", cert) if cert else None,
        client_private_key=_pem("TEMPORAL_TLS_KEY", key) if key else None,
    )


async def connect(settings: Settings, attempts: int = 60, runtime: Runtime | None = None) -> Client:
    """Connect to Temporal, waiting for it (a freshly started dev server takes a moment).
    Settings errors (a missing certificate) fail at once: waiting does not fix them.
    `runtime`: the worker's, which exports the SDK's metrics (api/worker_metrics.py)."""
    tls = tls_config(settings)
    for attempt in range(1, attempts + 1):
        try:
            return await Client.connect(
                settings.temporal_address,
                namespace=settings.temporal_namespace,
                data_converter=pydantic_data_converter,
                tls=tls,
                runtime=runtime,
            )
        except RuntimeError as err:
            if attempt == attempts:
                raise RuntimeError(
                    f"Temporal is not reachable at {settings.temporal_address}: {err}. "
                    "Start it with 'tempered temporal' or set TEMPORAL_ADDRESS."
                ) from err
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


async def ensure_search_attributes(client: Client) -> None:
    """Register TemperedState/Cluster/Role/Mac in the namespace if they are missing."""
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    missing = {
        key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        for key in search.ALL
        if key.name not in listed.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
        )
        log.info("registered search attributes %s", ", ".join(sorted(missing)))


def machine_start(status: MachineStatus, api_url: str = "") -> dict:
    """How every machine workflow is started: by identity, on our task queue, with the search
    attributes it begins with (the workflow keeps them current from then on) and its Web UI
    summary; `api_url` (the settings' TEMPERED_API) goes in the memo, for the links in its
    details. The ID may be reused once a machine was decommissioned and its workflow completed."""
    values = {search.STATE: status.state, search.CLUSTER: status.cluster, search.MAC: status.mac}
    return dict(
        id=machine_workflow_id(status.machine_id),
        task_queue=TASK_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=TypedSearchAttributes([SearchAttributePair(k, v) for k, v in values.items() if v]),
        static_summary=metadata.machine_summary(status),
        static_details=metadata.machine_static_details(status, api_url),
        memo=metadata.memo(api_url),
    )


def cluster_start(status: ClusterStatus, api_url: str = "") -> dict:
    """How every cluster workflow is started (as `machine_start`)."""
    return dict(
        id=cluster_workflow_id(status.spec.name),
        task_queue=TASK_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary=metadata.cluster_summary(status.spec),
        static_details=metadata.cluster_static_details(status.spec, api_url),
        memo=metadata.memo(api_url),
    )


async def start_cluster(client: Client, status: ClusterStatus, api_url: str = "") -> WorkflowHandle:
    return await client.start_workflow(
        ClusterWorkflow.run, status, id_conflict_policy=WorkflowIDConflictPolicy.FAIL, **cluster_start(status, api_url)
    )


async def start_machine(client: Client, status: MachineStatus, api_url: str = "") -> WorkflowHandle:
    """Start a machine's workflow in `new` (pre-registration); fails if it is already running."""
    return await client.start_workflow(
        MachineWorkflow.run, status, id_conflict_policy=WorkflowIDConflictPolicy.FAIL, **machine_start(status, api_url)
    )


async def pxe_boot(client: Client, status: MachineStatus, request: BootRequest, api_url: str = "",
                   update_id: str | None = None) -> BootInstruction:
    """Update-with-start: a machine's first PXE contact creates its workflow, later ones reach it.
    The same `update_id` asked again attaches to that Update (api/boot_questions.py)."""
    start = WithStartWorkflowOperation(
        MachineWorkflow.run, status, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        **machine_start(status, api_url),
    )
    try:
        return await client.execute_update_with_start_workflow(
            MachineWorkflow.pxe_boot, request, id=update_id, start_workflow_operation=start,
            rpc_timeout=BOOT_ANSWER_TIMEOUT,
        )
    except BaseException:
        await _retrieve_start(start)
        raise


async def _retrieve_start(start: WithStartWorkflowOperation) -> None:
    """A failed update-with-start also fails its start's handle, which nobody awaits: asyncio
    then logs "Future exception was never retrieved" with a traceback, once per boot answer that
    timed out (4,700 of them in a run of 1,000 machines, each a cost to the busy API)."""
    try:
        await asyncio.wait_for(start.workflow_handle(), timeout=0.01)
    except BaseException:  # noqa: BLE001 (the error the caller raises already; or no start error)
        pass


def machine(client: Client, machine_id: str) -> WorkflowHandle:
    return client.get_workflow_handle_for(MachineWorkflow.run, machine_workflow_id(machine_id))


def cluster(client: Client, name: str) -> WorkflowHandle:
    return client.get_workflow_handle_for(ClusterWorkflow.run, cluster_workflow_id(name))


async def query(handle: WorkflowHandle, result_type: type):
    """A workflow's `status` query, bounded so a missing worker is reported, not waited on."""
    return await handle.query("status", result_type=result_type, rpc_timeout=ANSWER_TIMEOUT)


async def update(handle: WorkflowHandle, name: str, *args, result_type: type, update_id: str | None = None):
    """An operator Update, bounded like `query`. The same `update_id` sent again attaches to that
    Update (a retry after a 504 adds no second Update while the first waits its turn)."""
    return await handle.execute_update(name, *args, id=update_id, result_type=result_type, rpc_timeout=ANSWER_TIMEOUT)


async def update_machine(handle: WorkflowHandle, name: str, *args, database_url: str,
                         update_id: str | None = None) -> MachineStatus:
    """A machine Update (`update`), whose answer's state, role and MAC are then written to the
    copy lists read (activities/storage/machinestate.py), stamped no later than the move."""
    sent_at = utcnow()
    status = await update(handle, name, *args, result_type=MachineStatus, update_id=update_id)
    await asyncio.to_thread(machinestate.save_status, database_url, status, sent_at)
    return status
