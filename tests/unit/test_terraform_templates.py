"""A Terraform task's variables (activities/tfvars.py): Jinja2 templates in the sandbox, with
StrictUndefined, over the cluster, its members and the other tasks' outputs; and how the runner
reads Terraform's own words (activities/tfprocess.py: its Error lines, its summary)."""

from __future__ import annotations

import json

import pytest

from activities import tfprocess, tfvars
from activities.domain.cluster import ClusterSpec, Member
from activities.domain.terraform import TerraformTask

MEMBERS = [
    tfvars.member(Member(machine_id="m1", role="master-prime", ready=True, node_name="cp-1"), "10.0.0.11"),
    tfvars.member(Member(machine_id="m2", role="worker", ready=False, node_name="wk-1"), None),
]


def spec(**fields) -> ClusterSpec:
    return ClusterSpec(name="prod", quorum_count=1, **fields)


def ctx(cluster: ClusterSpec | None = None, tasks: dict | None = None) -> dict:
    return tfvars.context(cluster or spec(), "prod", MEMBERS, tasks or {})


def test_strings_render_over_the_cluster_members_and_tasks():
    rendered = tfvars.render({
        "name": "{{ cluster.name }}-api",
        "cidr": "{{ cluster.pod_cidr }}",
        "masters": "{{ members | selectattr('role', 'eq', 'master-prime') | map(attribute='address') | join(',') }}",
        "nodes": "{{ members | map(attribute='name') | list | tojson }}",
        "vip": "{{ tasks.vip.outputs.endpoint }}",
        "plain": "no template here",
    }, ctx(tasks={"vip": {"endpoint": "192.0.2.10:6443"}}))
    assert rendered == {
        "name": "prod-api", "cidr": "10.244.0.0/16", "masters": "10.0.0.11", "nodes": '["cp-1", "wk-1"]',
        "vip": "192.0.2.10:6443", "plain": "no template here",
    }


def test_members_carry_name_address_role_machine_and_readiness():
    assert MEMBERS == [
        {"name": "cp-1", "address": "10.0.0.11", "role": "master-prime", "machine_id": "m1", "ready": True},
        {"name": "wk-1", "address": "", "role": "worker", "machine_id": "m2", "ready": False},
    ]


def test_lists_and_maps_render_inside_and_go_to_terraform_as_json():
    rendered = tfvars.render({"pool": ["192.0.2.1", "{{ cluster.name }}"], "tags": {"c": "{{ cluster.name }}"},
                              "count": 3, "on": True}, ctx())
    assert json.loads(rendered["pool"]) == ["192.0.2.1", "prod"]
    assert json.loads(rendered["tags"]) == {"c": "prod"}
    assert rendered["count"] == "3" and rendered["on"] == "true"
    assert tfvars.environment(rendered)["TF_VAR_pool"] == rendered["pool"]


def test_the_endpoint_is_the_specs_else_the_output_a_task_maps_onto_it():
    mapped = spec(terraform=[TerraformTask(name="vip", module="vip-pool", stage="before-bootstrap",
                                           outputs={"control_plane_endpoint": "endpoint"})])
    assert ctx(mapped)["cluster"]["control_plane_endpoint"] is None  # not applied yet
    assert ctx(mapped, {"vip": {"endpoint": "192.0.2.9:6443"}})["cluster"]["control_plane_endpoint"] == "192.0.2.9:6443"
    given = mapped.model_copy(update={"control_plane_endpoint": "api.prod.test:6443"})
    assert ctx(given, {"vip": {"endpoint": "192.0.2.9:6443"}})["cluster"]["control_plane_endpoint"] == "api.prod.test:6443"
    assert "terraform" not in ctx(mapped)["cluster"]


def test_a_gone_cluster_leaves_only_its_name():
    assert tfvars.context(None, "gone", [], {})["cluster"] == {"name": "gone", "control_plane_endpoint": None}


@pytest.mark.parametrize("template, problem", [
    ("{{ cluster.nope }}", "has no attribute 'nope'"),
    ("{{ tasks.vip.outputs.endpoint }}", "'vip'"),
    ("{{ undefined_name }}", "'undefined_name' is undefined"),
    ("{{ cluster.name ", "TemplateSyntaxError"),
    ("{{ ''.__class__.__mro__ }}", "__class__"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
])
def test_a_template_that_does_not_resolve_names_the_variable_and_the_problem(template, problem):
    with pytest.raises(tfvars.VariableError) as failed:
        tfvars.render({"ok": "{{ cluster.name }}", "endpoint": template}, ctx())
    assert failed.value.name == "endpoint"
    assert str(failed.value).startswith("variable 'endpoint' does not resolve: ") and problem in str(failed.value)


def test_the_sandbox_refuses_what_reaches_python_internals():
    with pytest.raises(tfvars.VariableError, match="SecurityError|unsafe"):
        tfvars.render({"x": "{{ cluster.items.__self__ }}"}, ctx())
    with pytest.raises(tfvars.VariableError, match="SecurityError|unsafe|undefined"):
        tfvars.render({"x": "{{ cycler.__init__.__globals__ }}"}, ctx())


def test_a_name_terraform_cannot_declare_is_refused():
    with pytest.raises(tfvars.VariableError, match="not a Terraform variable name"):
        tfvars.render({"1bad": "x"}, ctx())


def test_only_non_sensitive_outputs_are_kept_as_strings():
    state = {"outputs": {"endpoint": {"value": "v:6443", "type": "string"}, "count": {"value": 3, "type": "number"},
                         "key": {"value": "s3cret", "type": "string", "sensitive": True}}}
    assert tfvars.state_outputs(state) == {"endpoint": "v:6443", "count": "3"}


STDERR = """
Error: Resource precondition failed

  on main.tf line 10, in resource "terraform_data" "x":
  10:       condition     = var.want > 5
    ├────────────────
    │ var.want is 2

want must be above 5, got 2.

Warning: Something minor

  this is not an error

Error: execution halted

Error: execution halted
"""


def test_terraforms_error_lines_are_kept_one_per_error_trimmed_and_once():
    found = tfprocess.errors(STDERR)
    assert found == [
        'Error: Resource precondition failed on main.tf line 10, in resource "terraform_data" "x": '
        "10: condition = var.want > 5 var.want is 2 want must be above 5, got 2.",
        "Error: execution halted",
    ]
    assert all(len(e) <= tfprocess.MAX_ERROR for e in tfprocess.errors("Error: " + "x" * 5000))


def test_a_failure_message_never_holds_the_password():
    message = tfprocess.failure("init", 1, "", "Error: bad\n\nthe password pw-123 leaked\n", "pw-123")
    assert message == "terraform init failed (exit 1): Error: bad the password (hidden) leaked"
    assert "no output" in tfprocess.failure("apply", 1, "", "", "pw")


def test_the_summary_says_what_changed():
    out = """
Terraform will perform the following actions:

  # terraform_data.vip will be created
  + resource "terraform_data" "vip" {

Plan: 1 to add, 0 to change, 0 to destroy.
terraform_data.vip: Creating...

Apply complete! Resources: 1 added, 0 changed, 0 destroyed.
"""
    assert tfprocess.summary(out).splitlines() == [
        "# terraform_data.vip will be created", "Plan: 1 to add, 0 to change, 0 to destroy.",
        "Apply complete! Resources: 1 added, 0 changed, 0 destroyed.",
    ]
    assert tfprocess.changed(out)
    assert not tfprocess.changed("Apply complete! Resources: 0 added, 0 changed, 0 destroyed.")
    assert tfprocess.changed("Destroy complete! Resources: 1 destroyed.")
    assert not tfprocess.changed("Destroy complete! Resources: 0 destroyed.")


@pytest.mark.parametrize("template", [
    "{{ 'a' * 10**7 }}",
    "{{ 10**7 * 'a' }}",
    "{{ ([0] * 10**8) | length }}",
    "{{ 2 ** (10 ** 9) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}xx{% endfor %}{% endfor %}",
])
def test_a_template_that_would_make_a_huge_value_is_refused_naming_its_variable(template):
    with pytest.raises(tfvars.VariableError, match="variable 'big' does not resolve: TooLarge"):
        tfvars.render({"ok": "{{ 'a' * 3 }}{{ 2 ** 8 }}", "big": template}, ctx())


def test_a_value_over_the_cap_is_refused_and_one_under_it_renders():
    under = tfvars.render({"v": ["{{ 'a' * 1000 }}"] * 60}, ctx())["v"]
    assert len(under) > 60_000
    with pytest.raises(tfvars.VariableError, match="variable 'v' does not resolve: TooLarge: the value is"):
        tfvars.render({"v": ["{{ 'a' * 1000 }}"] * 70}, ctx())
