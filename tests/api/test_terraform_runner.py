"""The Terraform runner (issue 16, items 2 and 6): the `run_terraform` activity, called through
temporalio's ActivityEnvironment (heartbeats and cancellation as a worker gives them), running
the real engine (`tempered-terraform`, Terraform 1.15) against a real `tempered api`'s state store.

The cluster's record is written to the database directly, with its `terraform` tasks in the
spec but no cluster workflow: what the runner reads (the spec, the other tasks' states) is
there, and no workflow runs the tasks behind the test's back. Modules: the repository's
`vip-pool` and `node-record`, plus small ones written here (one that echoes its variables, one
whose precondition fails, one that waits on a gate file, one with a sensitive output).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.domain.cluster import ClusterSpec
from activities.domain.terraform import TerraformResult, TerraformRun, TerraformTask
from activities.storage import db, tfcredentials, tfstate
from activities.storage.models import Cluster
from activities.terraform import TerraformActivities
from tests.conftest import eventually
from tests.servers import wait_for

REPO_MODULES = Path(__file__).resolve().parents[2] / "infra" / "terraform"

MODULES = {
    "echo": """
variable "text" { type = string }
variable "items" {
  type    = list(string)
  default = []
}
output "text" { value = var.text }
output "items" { value = var.items }
""",
    "failing": """
variable "want" {
  type    = number
  default = 1
}
resource "terraform_data" "x" {
  input = var.want
  lifecycle {
    precondition {
      condition     = var.want > 5
      error_message = "want must be above 5, got ${var.want}."
    }
  }
}
""",
    "gated": """
variable "gate" { type = string }
resource "terraform_data" "slow" {
  input = "slow"
  provisioner "local-exec" {
    command = "touch ${var.gate}.started && while [ ! -e ${var.gate}.release ]; do sleep 0.1; done"
  }
}
output "done" { value = terraform_data.slow.output }
""",
    # Its local-exec takes the state's lock away mid-apply (a force-unlock, then another lock
    # ID): Terraform's final save is refused and it writes errored.tfstate.
    "stolen": """
resource "terraform_data" "made" {
  input = "made"
  provisioner "local-exec" {
    command = <<-EOT
      curl -sf -u "$TF_HTTP_USERNAME:$TF_HTTP_PASSWORD" -X UNLOCK "$TF_HTTP_ADDRESS"
      curl -sf -u "$TF_HTTP_USERNAME:$TF_HTTP_PASSWORD" -X LOCK -d '{"ID":"thief","Who":"the test"}' "$TF_HTTP_ADDRESS"
    EOT
  }
}
""",
    "sensitive": """
variable "word" { type = string }
resource "terraform_data" "s" { input = var.word }
output "plain" { value = "plain-${var.word}" }
output "secret" {
  value     = "hidden-${terraform_data.s.output}"
  sensitive = true
}
""",
}


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module root: the repository's offline modules, the test's, and a link that leaves it."""
    root = tmp_path_factory.mktemp("modules")
    for name in ("vip-pool", "node-record"):
        shutil.copytree(REPO_MODULES / name, root / name)
    for name, text in MODULES.items():
        (root / name).mkdir()
        (root / name / "main.tf").write_text(text)
    (root / "escape").symlink_to(tmp_path_factory.mktemp("elsewhere"))
    return root


@pytest.fixture
def site(settings, api_server, modules, unique):
    """Settings pointing at the real API and the module root, and a cluster with two tasks."""
    tf_settings = replace(settings, api_url=api_server.url, terraform_modules=modules)
    name = unique("tfr")
    spec = ClusterSpec(name=name, quorum_count=1, terraform=[
        TerraformTask(name="vip", module="vip-pool", stage="before-bootstrap",
                      variables={"cluster": "{{ cluster.name }}", "pool": ["192.0.2.10", "192.0.2.11", "192.0.2.12"]},
                      outputs={"control_plane_endpoint": "endpoint"}),
        TerraformTask(name="echo", module="echo", stage="after-ready"),
    ])
    with db.session(settings.database_url) as s:
        s.add(Cluster(name=name, spec=spec.model_dump(mode="json")))
        s.commit()
    yield tf_settings, name
    with db.session(settings.database_url) as s:  # a row with no workflow: the other tests' cluster list
        s.delete(s.get(Cluster, name))
        s.commit()


def task(name: str, module: str, **variables) -> TerraformTask:
    return TerraformTask(name=name, module=module, stage="after-ready", variables=variables)


async def run(settings, cluster: str, t: TerraformTask, action: str = "apply",
              beats: list | None = None) -> TerraformResult:
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: (beats if beats is not None else []).append(details)
    return await env.run(TerraformActivities(settings).run_terraform, TerraformRun(cluster=cluster, task=t, action=action))


def run_dirs(settings) -> set[Path]:
    return set(settings.runs_dir.iterdir()) if settings.runs_dir.is_dir() else set()


def terraform_pids(marker: str) -> list[int]:
    """Processes whose environment carries this run's marker (Terraform and its children)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and f"TEMPERED_ANSIBLE_RUN={marker}".encode() in environ:
            found.append(int(proc.name))
    return found


async def test_apply_gives_the_outputs_and_a_second_apply_changes_nothing(site):
    settings, cluster = site
    vip = task("vip", "vip-pool", cluster="{{ cluster.name }}", pool=["192.0.2.10", "192.0.2.11", "192.0.2.12"])
    beats: list = []
    first = await run(settings, cluster, vip, beats=beats)
    assert first.action == "apply" and first.changes
    assert "Apply complete! Resources: 1 added" in first.summary
    assert "terraform_data.vip will be created" in first.summary
    assert first.outputs["endpoint"] in {f"192.0.2.1{i}:6443" for i in range(3)}
    assert first.outputs["endpoint"] == first.outputs["address"] + ":6443"
    assert beats, "the run heartbeats"
    assert tfstate.current(settings, cluster, "vip") is not None, "the state is in Tempered's store"

    again = await run(settings, cluster, vip)
    assert not again.changes and "0 added, 0 changed, 0 destroyed" in again.summary
    assert again.outputs == first.outputs

    plan = await run(settings, cluster, vip, action="plan")
    assert plan.action == "plan" and not plan.changes and "No changes." in plan.summary
    assert tfstate.lock_info(settings, cluster, "vip") is None


async def test_plan_reports_changes_and_destroy_removes_what_apply_made(site):
    settings, cluster = site
    record = task("record", "node-record", cluster="{{ cluster.name }}", nodes="{{ members | tojson }}")
    plan = await run(settings, cluster, record, action="plan")
    assert plan.changes and "terraform_data.nodes will be created" in plan.summary and "Plan: 1 to add" in plan.summary
    assert tfstate.current(settings, cluster, "record") is None, "a plan writes no state"

    applied = await run(settings, cluster, record)
    assert applied.outputs == {"node_count": "0", "names": "", "control_plane": ""}  # no cluster workflow: no members

    destroyed = await run(settings, cluster, record, action="destroy")
    assert destroyed.changes and "Destroy complete! Resources: 1 destroyed." in destroyed.summary
    assert destroyed.outputs == {}
    assert (await run(settings, cluster, record, action="plan")).changes, "after destroy, applying would create again"


async def test_templates_see_the_cluster_and_the_other_tasks_outputs(site):
    settings, cluster = site
    vip = (await run(settings, cluster, task("vip", "vip-pool", cluster=cluster, pool=["192.0.2.20"]))).outputs
    echo = task("echo", "echo", text="{{ cluster.name }} {{ tasks.vip.outputs.endpoint }} {{ cluster.control_plane_endpoint }}",
                items=["{{ cluster.quorum_count }}", "{{ cluster.pod_cidr }}"])
    result = await run(settings, cluster, echo)
    assert result.outputs["text"] == f"{cluster} {vip['endpoint']} 192.0.2.20:6443"
    assert result.outputs["items"] == '["1", "10.244.0.0/16"]'


async def test_a_failing_module_fails_once_with_terraforms_own_error_lines(site):
    settings, cluster = site
    before = run_dirs(settings)
    with pytest.raises(ApplicationError) as failed:
        await run(settings, cluster, task("bad", "failing", want="{{ 2 }}"))
    assert failed.value.non_retryable and failed.value.type == "TerraformFailed"
    message = str(failed.value)
    assert "terraform apply failed" in message
    assert "Error: Resource precondition failed" in message and "want must be above 5, got 2." in message
    assert tfcredentials.cluster_credentials(settings, cluster)[1] not in message
    assert run_dirs(settings) == before, "the run dir is removed after a failure"
    assert tfstate.lock_info(settings, cluster, "bad") is None


async def test_a_module_that_is_missing_or_leaves_the_root_is_refused(site):
    settings, cluster = site
    with pytest.raises(ApplicationError) as missing:
        await run(settings, cluster, task("gone", "no-such-module"))
    assert missing.value.non_retryable and missing.value.type == "ModuleNotFound"
    assert "no-such-module" in str(missing.value) and "does not exist" in str(missing.value)
    with pytest.raises(ApplicationError) as escaping:
        await run(settings, cluster, task("out", "escape"))
    assert escaping.value.non_retryable and escaping.value.type == "ModuleOutsideRoot"


async def test_a_variable_that_does_not_resolve_names_it_and_runs_nothing(site):
    settings, cluster = site
    before = run_dirs(settings)
    with pytest.raises(ApplicationError) as failed:
        await run(settings, cluster, task("echo", "echo", text="{{ cluster.nope }}"))
    assert failed.value.non_retryable and failed.value.type == "VariableUnresolved"
    assert "variable 'text' does not resolve" in str(failed.value) and "nope" in str(failed.value)
    with pytest.raises(ApplicationError, match="variable 'text' does not resolve: .*has no attribute 'missing'"):
        await run(settings, cluster, task("echo", "echo", text="{{ tasks.missing.outputs.x }}"))
    assert run_dirs(settings) == before


async def test_cancellation_interrupts_terraform_releases_the_lock_and_removes_the_run_dir(site, tmp_path, api_server):
    settings, cluster = site
    password = tfcredentials.cluster_credentials(settings, cluster)[1]
    gate = tmp_path / "gate"
    gated = task("slow", "gated", gate=str(gate))
    env, beats = ActivityEnvironment(), []
    env.on_heartbeat = lambda *details: beats.append(details)
    before = run_dirs(settings)
    running = asyncio.ensure_future(env.run(TerraformActivities(settings).run_terraform, TerraformRun(cluster=cluster, task=gated)))
    await asyncio.to_thread(wait_for, lambda: Path(f"{gate}.started").exists(), "the apply to reach its local-exec", 120)

    (run_dir,) = run_dirs(settings) - before
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(".terraform" in p.parts for p in files), "init ran in the run dir"
    assert not [p for p in files if password.encode() in p.read_bytes()], "the password is in no file"
    assert tfstate.lock_info(settings, cluster, "slow") is not None, "the apply holds the state lock"
    marker = (run_dir / ".marker").read_text()
    assert terraform_pids(marker)
    await asyncio.to_thread(wait_for, lambda: any("local-exec" in str(d) for d in beats), "a heartbeat with Terraform's progress", 30)

    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    async def all_gone() -> bool:  # a process SIGKILLed but not yet reaped can still show for a moment
        return terraform_pids(marker) == []

    await eventually(all_gone, what="Terraform and its local-exec to be gone")
    assert tfstate.lock_info(settings, cluster, "slow") is None, "Terraform released its state lock"
    assert not run_dir.exists()

    Path(f"{gate}.release").touch()
    done = await run(settings, cluster, gated)  # nothing left locked: the next run goes through
    assert done.outputs == {"done": "slow"}


async def test_sensitive_outputs_and_the_password_are_never_returned_or_logged(site, api_server, caplog):
    settings, cluster = site
    password = tfcredentials.cluster_credentials(settings, cluster)[1]
    beats: list = []
    caplog.set_level("DEBUG")
    result = await run(settings, cluster, task("sens", "sensitive", word="w1"), beats=beats)
    assert result.outputs == {"plain": "plain-w1"}
    seen = caplog.text + repr(beats) + result.model_dump_json() + (settings.home / "api.log").read_text()
    assert "hidden-w1" not in seen and password not in seen


async def test_a_state_terraform_could_not_save_is_kept_in_the_store(site):
    settings, cluster = site
    before = run_dirs(settings)
    try:
        with pytest.raises(ApplicationError) as failed:
            await run(settings, cluster, task("stolen", "stolen"))
        latest = tfstate.versions(settings, cluster, "stolen")[-1]
        message = str(failed.value)
        assert failed.value.non_retryable and "terraform apply failed" in message
        assert f"errored.tfstate was saved as version {latest.version} of {cluster}/stolen" in message
        assert latest.written_by == "runner (errored.tfstate)" and "locked by thief" in latest.note
        body, _ = tfstate.current(settings, cluster, "stolen")
        assert '"terraform_data"' in body.decode() and '"made"' in body.decode(), "what the apply made is on record"
        assert run_dirs(settings) == before
    finally:
        tfstate.unlock(settings, cluster, "stolen", None)


async def test_a_destroy_of_a_state_that_holds_nothing_runs_nothing(site):
    """A task never applied (here: its variable can never resolve) is destroyed without running
    Terraform or rendering anything, so such a cluster can still be deleted."""
    settings, cluster = site
    broken = task("never", "vip-pool", cluster="{{ cluster.no_such_field }}")
    result = await run(settings, cluster, broken, "destroy")
    assert (result.action, result.summary) == ("destroy", "nothing to destroy: its state holds no resources")
    assert tfstate.current(settings, cluster, "never") is None  # and no state was written
