"""The activities the workflows call, named, typed and with their policy; never imported.

Workflows schedule activities by name (`evaluate_rules`, `kubeadm_join`, ...), the way the
Temporal samples and MAAS do, so a workflow module loads only the domain's Pydantic types:
not Ansible, SQLModel or cryptography. `tempered worker` registers the implementations under
the same names (`api/worker.py`); tests/unit/test_activity_names.py checks that the two lists agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from temporalio import workflow

from workflows import policies
from workflows.policies import Policy

with workflow.unsafe.imports_passed_through():
    from activities.domain.cluster import CredentialsRequest, JoinCredentials
    from activities.domain.dns import ApiNameDns, NodeDns
    from activities.domain.machine import (
        Admission,
        AdmitRequest,
        DecommissionRequest,
        JoinOutcome,
        JoinPlan,
        JoinPlanRequest,
        JoinRequest,
        RenderRequest,
        RenderResult,
        StateRecord,
    )
    from activities.domain.operations import MachineWait, NodeRef
    from activities.domain.power import PowerRequest, PowerResult, PowerTarget
    from activities.domain.rules import RulesBatch, RulesRequest, RulesVerdict
    from activities.domain.terraform import TerraformResult, TerraformRun

Arg = TypeVar("Arg")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Activity(Generic[Arg, Result]):
    """One activity as a workflow sees it: its registered name, result type and policy."""

    name: str
    result: type[Result] | None
    policy: Policy

    async def __call__(self, arg: Arg, **options: Any) -> Result:
        """Run it; `options` override the policy's (e.g. a heartbeat only newer runs ask for)."""
        return await workflow.execute_activity(
            self.name, arg, result_type=self.result, **(self.policy.options() | options)
        )


# The machine workflow's steps
admit_machine = Activity[AdmitRequest, Admission]("admit_machine", Admission, policies.ADMIT)
render_user_data = Activity[RenderRequest, RenderResult]("render_user_data", RenderResult, policies.STEP)
join_plan = Activity[JoinPlanRequest, JoinPlan]("join_plan", JoinPlan, policies.PLAN)
kubeadm_join = Activity[JoinRequest, JoinOutcome]("kubeadm_join", JoinOutcome, policies.KUBEADM)
kubeadm_decommission = Activity[DecommissionRequest, str]("kubeadm_decommission", str, policies.KUBEADM)
publish_node_dns = Activity[NodeDns, str]("publish_node_dns", str, policies.DNS)
remove_node_dns = Activity[NodeDns, str]("remove_node_dns", str, policies.DNS)
retire_machine = Activity[str, None]("retire_machine", None, policies.STEP)
record_state = Activity[StateRecord, None]("record_state", None, policies.RECORD)

# The cluster workflow's
evaluate_rules = Activity[RulesRequest, RulesVerdict]("evaluate_rules", RulesVerdict, policies.RULES)
evaluate_rules_batch = Activity[RulesBatch, list[RulesVerdict]](
    "evaluate_rules_batch", list[RulesVerdict], policies.RULES_BATCH
)
record_roles = Activity[dict[str, str], None]("record_roles", None, policies.RECORD)
mint_join_credentials = Activity[CredentialsRequest, JoinCredentials](
    "mint_join_credentials", JoinCredentials, policies.MINT
)
publish_api_name = Activity[ApiNameDns, str]("publish_api_name", str, policies.DNS)
decommission_member = Activity[str, str]("decommission_member", str, policies.DECOMMISSION)
forget_cluster = Activity[str, None]("forget_cluster", None, policies.RECORD)
cluster_machines = Activity[str, list[str]]("cluster_machines", list[str], policies.RECORD)
# A Terraform task of the cluster spec (workflows/terraform_steps.py)
run_terraform = Activity[TerraformRun, TerraformResult]("run_terraform", TerraformResult, policies.TERRAFORM)

# Power (activities/power.py): where a machine's power is (main queue), and a command to its BMC, on
# the task queue of the machine's site (`options(task_queue=site_queue(site))`).
power_target = Activity[str, PowerTarget]("power_target", PowerTarget, policies.RECORD)
power_machine = Activity[PowerRequest, PowerResult]("power_machine", PowerResult, policies.POWER)
# Cluster operations (workflows/operation.py): nodes through kubectl on a ready control plane, and the
# machine workflows they reboot.
drain_node = Activity[NodeRef, str]("drain_node", str, policies.DRAIN)
uncordon_node = Activity[NodeRef, str]("uncordon_node", str, policies.DRAIN)
node_version = Activity[NodeRef, str]("node_version", str, policies.DRAIN)
reboot_member = Activity[str, int]("reboot_member", int, policies.REBOOT)
await_machine = Activity[MachineWait, str]("await_machine", str, policies.AWAIT)

ALL = (
    admit_machine, render_user_data, join_plan, kubeadm_join, kubeadm_decommission, publish_node_dns,
    remove_node_dns, retire_machine, record_state, evaluate_rules, evaluate_rules_batch, record_roles, mint_join_credentials,
    publish_api_name,
    decommission_member, forget_cluster, cluster_machines, run_terraform,
    power_target, power_machine, drain_node, uncordon_node, node_version, reboot_member, await_machine,
)
