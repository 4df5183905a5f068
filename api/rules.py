"""Operator routes for a cluster's rules: save (checked first), read, and dry-run.

Saving checks every rule before anything is stored: an unknown attribute type or a variable
not of the form name=value is a 422 from the model, a JavaScript syntax error is a 422 with
its line. Saving also asks the cluster's held machines to be admitted again, so a machine
held for a failing rule is re-evaluated under the new rules.

A rule set is bounded (MAX_RULES rules: 422 beyond; its body by the API's MAX_BODY_BYTES: 413), and the
sandbox and database work of a save or a dry-run runs in a worker thread (at most
`app.state.blocking` at a time), never on the event loop: `/healthz` answers while it runs.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import delete, select
from temporalio.client import Client

from activities import rules as rules_activity
from activities.domain.cluster import ClusterSpec, ClusterStatus
from activities.domain.rules import Attributes, Rule, RulesRequest
from activities.storage import db
from api import temporal
from api.auth import Operator, Viewer
from activities.storage.models import Cluster, Machine, Rule as RuleRow
from activities.storage.settings import Settings
from workflows import search

MAX_RULES = 500  # a rule set is checked rule by rule in the sandbox (about 7 ms each)


router = APIRouter(prefix="/v1/clusters/{name}/rules", tags=["rules"])


class DryRunRow(BaseModel):
    """One machine of a dry run: what it holds now, and what these rules would give it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "machine_id": "4c4c4544-0042-3510-8052-b4c04f4e3132",
        "current": {"role": "worker", "labels": [], "taints": [], "includes": [], "variables": {}, "kargs": []},
        "would_be": {"role": "worker", "labels": ["node-role/storage=true"], "taints": [], "includes": [],
                     "variables": {}, "kargs": []},
        "errors": [],
    }]})

    machine_id: str = Field(description="a machine of the cluster")
    current: Attributes = Field(description="the attributes it holds now")
    would_be: Attributes | None = Field(description="what these rules give it as if provisioned anew (none: errors)")
    errors: list[str] = Field(description="rules that failed to evaluate for it")


def _cluster_or_404(settings: Settings, name: str) -> ClusterSpec:
    with db.session(settings.database_url) as s:
        row = s.get(Cluster, name)
    if row is None:
        raise HTTPException(404, f"no cluster named {name!r}")
    return ClusterSpec.model_validate(row.spec)


async def _off_the_loop(request: Request, work: Callable, *args):
    """Run blocking work (the sandbox, the database) in a worker thread, a bounded number at once."""
    return await anyio.to_thread.run_sync(work, *args, limiter=request.app.state.blocking)


def _check(request: Request, rules: list[Rule]) -> None:
    if len(rules) > MAX_RULES:
        raise HTTPException(422, f"{len(rules)} rules: a rule set is at most {MAX_RULES} rules")
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise HTTPException(422, "rule names must be unique")
    for rule in rules:
        problem = request.app.state.sandbox.check(rule.expression)
        if problem:
            raise HTTPException(422, f"rule {rule.name!r}: {problem}")


@router.put("", summary="Replace the cluster's ordered rules (each checked first)")
async def put_rules(name: str, rules: list[Rule], request: Request, _: Operator) -> list[Rule]:
    await _off_the_loop(request, _check_and_store, request, name, rules)
    await _release_held(request.app.state.temporal, name)
    return rules


def _check_and_store(request: Request, name: str, rules: list[Rule]) -> None:
    settings: Settings = request.app.state.settings
    _cluster_or_404(settings, name)
    _check(request, rules)
    with db.session(settings.database_url) as s:
        s.exec(delete(RuleRow).where(RuleRow.cluster == name))
        for position, rule in enumerate(rules):
            s.add(RuleRow(cluster=name, position=position, **rule.model_dump(mode="json")))
        s.commit()


@router.get("", summary="The cluster's rules, in order")
def get_rules(name: str, request: Request, _: Viewer) -> list[Rule]:
    settings: Settings = request.app.state.settings
    _cluster_or_404(settings, name)
    with db.session(settings.database_url) as s:
        return rules_activity.load_rules(s, name)


@router.post("/dry-run", summary="What these rules would give every machine of the cluster")
async def dry_run(name: str, rules: list[Rule], request: Request, _: Operator) -> list[DryRunRow]:
    """Each machine is evaluated as if it were provisioned anew, against the others as they
    are now; nothing is stored."""
    spec = await _off_the_loop(request, _checked_spec, request, name, rules)
    status = await temporal.query(temporal.cluster(request.app.state.temporal, name), ClusterStatus)
    return await _off_the_loop(request, _evaluate_all, request, spec, rules, status)


def _checked_spec(request: Request, name: str, rules: list[Rule]) -> ClusterSpec:
    spec = _cluster_or_404(request.app.state.settings, name)
    _check(request, rules)
    return spec


def _evaluate_all(request: Request, spec: ClusterSpec, rules: list[Rule], status: ClusterStatus) -> list[DryRunRow]:
    settings: Settings = request.app.state.settings
    name = spec.name
    rows = []
    contexts = rules_activity.Contexts()
    with db.session(settings.database_url) as s:
        machines = s.exec(select(Machine.id).where(Machine.cluster == name, Machine.decommissioned_at.is_(None))).all()
        for machine_id in sorted(machines):
            held = rules_activity.current(s, machine_id)
            ask = RulesRequest(cluster=name, machine_id=machine_id, is_new=True, members=status.members)
            ctx = contexts.encode(s, ask, spec.quorum_count)
            result, errors = rules_activity.decide(request.app.state.sandbox, rules, ctx, True, Attributes())
            rows.append(DryRunRow(machine_id=machine_id, current=held, would_be=None if errors else result, errors=errors))
    return rows


async def _release_held(client: Client, cluster: str) -> None:
    query = f"WorkflowType = 'MachineWorkflow' AND ExecutionStatus = 'Running' AND {search.CLUSTER.name} = '{cluster}' AND {search.STATE.name} = 'holding'"
    async for wf in client.list_workflows(query):
        await client.get_workflow_handle(wf.id).signal("release")
