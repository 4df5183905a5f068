"""The API starts machine and cluster workflows with their Web UI metadata, linking to itself
at its own `TEMPERED_API` (the settings), read back through Temporal's API."""

from __future__ import annotations

from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client

from api import temporal
from tests.conftest import eventually


async def test_the_api_starts_workflows_with_summaries_and_links_to_itself(api_server, client: Client, unique) -> None:
    name, mac = unique("c"), "52:54:00:ab:0e:01"
    with api_server.client() as http:
        assert http.post("/v1/clusters", json={"name": name, "quorum_count": 1}).status_code == 201
        created = http.post("/v1/machines", json={"cluster": name, "mac": mac})
        assert created.status_code == 201, created.text
    machine_id = created.json()["id"]

    machine = await temporal.machine(client, machine_id).describe()
    assert await machine.static_summary() == f"MAC {mac} · cluster {name}"
    assert f"({api_server.url}/v1/machines/{machine_id})" in (await machine.static_details() or "")
    cluster = await temporal.cluster(client, name).describe()
    assert await cluster.static_summary() == f"cluster {name} · quorum 1 · Kubernetes 1.31.0 · ansible join"
    assert f"({api_server.url}/v1/clusters/{name})" in (await cluster.static_details() or "")

    async def current() -> bool:  # served by the session's real worker
        metadata = await temporal.machine(client, machine_id).query(
            "__temporal_workflow_metadata", result_type=WorkflowMetadata
        )
        return metadata.current_details.startswith("**new**") and f"({api_server.url}/v1/clusters/{name})" in (
            metadata.current_details
        )

    await eventually(current, what="the machine's current details, with links to this API")
