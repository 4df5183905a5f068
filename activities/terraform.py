"""The Terraform runner: the `run_terraform` activity runs one task's module (init, then apply,
plan or destroy, then output) against the task's state in Tempered's own store.

A run, step by step:
1. a private run directory under `$TEMPERED_HOME/runs` (0700, removed however the run ends;
   the one Ansible runs use, so a worker that starts sweeps what a killed one left);
2. the module copied there from the module root (`TEMPERED_TERRAFORM_MODULES`; a `module` that
   leaves the root or does not exist is refused), plus a file declaring `backend "http" {}`;
3. the variables rendered (activities/tfvars.py) over the cluster, its members and the other
   tasks' outputs;
4. Terraform (`TEMPERED_TERRAFORM_BIN`, else `tempered-terraform` beside this Python) with
   only the environment it needs: the state's address and the cluster's basic-auth credentials
   as TF_HTTP_*, the variables as TF_VAR_* (the worker's own TF_VAR_*, then the task's), the
   site's TLS trust and proxy settings (SSL_CERT_FILE, HTTPS_PROXY, ...), and
   a CLI config that installs providers from a local mirror only (`TEMPERED_TERRAFORM_CLI_CONFIG`
   replaces it): no file holds a secret;
5. its outputs read back with `output -json`: the non-sensitive ones, as strings.
6. on a failure, an `errored.tfstate` Terraform left (it could not save the state) stored as
   the state's next version before the run directory goes.

Progress (Terraform's last line) is heartbeated; a cancelled activity interrupts Terraform
(activities/tfprocess.py); a failure is a non-retryable ApplicationError with Terraform's own
error lines, so the workflow's step fails once, with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from pathlib import Path

from python_terraform import IsFlagged, IsNotFlagged
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import ansible, tfprocess, tfvars
from activities.domain.cluster import ClusterSpec, ClusterStatus
from activities.domain.ids import cluster_workflow_id, machine_workflow_id
from activities.domain.machine import MachineStatus
from activities.domain.terraform import TerraformResult, TerraformRun
from activities.heartbeat import Progress, heartbeating, heartbeating_run, in_runs_pool
from activities.storage import db, tfcredentials, tfstate
from activities.storage.models import Cluster
from activities.storage.settings import Settings

HEARTBEAT_EVERY = 5.0  # seconds; the workflows allow 30 s between heartbeats
LOCK_TIMEOUT = "60s"  # how long a run waits for another run's state lock
BACKEND_FILE = "_tempered_backend.tf"
ERRORED_WHO = "runner (errored.tfstate)"
BACKEND = 'terraform {\n  backend "http" {}\n}\n'
# Never copied into a run: another working directory's leftovers, local state.
IGNORED = shutil.ignore_patterns(".terraform", "terraform.tfstate", "terraform.tfstate.*", "*.tfplan")


def _fail(message: str, kind: str) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


def binary(settings: Settings) -> str:
    """The Terraform to run: the site's (a name on PATH or a path), else `tempered-terraform`."""
    chosen = settings.terraform_bin or str(Path(sys.executable).parent / "tempered-terraform")
    found = shutil.which(chosen)
    if found is None:
        raise _fail(f"no Terraform executable at {chosen!r} (TEMPERED_TERRAFORM_BIN)", "TerraformNotFound")
    return found


def module_dir(settings: Settings, module: str) -> Path:
    """The module's directory under the module root; refused if it leaves the root or is not there."""
    root = settings.terraform_modules.resolve()
    path = (root / module).resolve()
    if not path.is_relative_to(root) or path == root:
        raise _fail(f"module {module!r} is not a directory under the module root {root}", "ModuleOutsideRoot")
    if not path.is_dir():
        raise _fail(f"module {module!r} does not exist under the module root {root} (TEMPERED_TERRAFORM_MODULES)",
                    "ModuleNotFound")
    return path


def provider_mirror(settings: Settings) -> Path:
    """Where the default CLI config lets Terraform install providers from: nowhere else."""
    return settings.home / "terraform" / "providers"


def cli_config(settings: Settings, run_dir: Path) -> Path:
    """The site's CLI config, else one written for this run: providers from the local mirror
    only (no registry, no network), and no version check against checkpoint.hashicorp.com."""
    if settings.terraform_cli_config is not None:
        return settings.terraform_cli_config
    path = run_dir / "terraformrc"
    path.write_text(
        "# Written by Tempered for one run: offline.\n"
        "disable_checkpoint = true\n"
        "provider_installation {\n"
        f"  filesystem_mirror {{\n    path = {json.dumps(str(provider_mirror(settings)))}\n  }}\n"
        "}\n"
    )
    return path


def state_address(settings: Settings, cluster: str, task: str) -> str:
    return f"{settings.api_url}/v1/terraform/state/{cluster}/{task}"


# The site's TLS trust and proxies: with the API behind a private CA or a proxy, Terraform
# reaches the state store only with them.
PASSED_THROUGH = tuple(
    form for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")
    for form in (name, name.lower())
)


def site_environment(worker_env: dict[str, str]) -> dict[str, str]:
    """What Terraform takes from the worker's own environment: the TLS and proxy settings, and
    the site's TF_VAR_* (set for the worker, e.g. a TSIG secret)."""
    return {name: value for name, value in worker_env.items()
            if name in PASSED_THROUGH or name.startswith("TF_VAR_")}


def environment(settings: Settings, run: TerraformRun, run_dir: Path, marker: str, variables: dict[str, str]) -> dict[str, str]:
    """Terraform's whole environment: nothing of the worker's leaks in, no secret goes to a file."""
    username, password = tfcredentials.cluster_credentials(settings, run.cluster)
    address = state_address(settings, run.cluster, run.task.name)
    (run_dir / "tmp").mkdir(mode=0o700)
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(run_dir),
        "TMPDIR": str(run_dir / "tmp"),
        "TF_CLI_CONFIG_FILE": str(cli_config(settings, run_dir)),
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
        "TF_HTTP_ADDRESS": address,
        "TF_HTTP_LOCK_ADDRESS": address,
        "TF_HTTP_UNLOCK_ADDRESS": address,
        "TF_HTTP_USERNAME": username,
        "TF_HTTP_PASSWORD": password,
        "TEMPERED_ANSIBLE_RUN": marker,  # the run dir's marker: its leftovers are stopped with it
        # The site's TLS, proxies and own TF_VAR_*, then the task's variables.
        **site_environment(dict(os.environ)),
        **tfvars.environment(variables),
    }


def _check(step: str, result: tuple[int, str, str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[int, str]:
    code, out, err = result
    if code not in ok:
        raise _fail(tfprocess.failure(step, code, out, err, env["TF_HTTP_PASSWORD"]), "TerraformFailed")
    return code, out


def _outputs(tf: tfprocess.Terraform, env: dict[str, str]) -> dict[str, str]:
    """The non-sensitive outputs, as strings. stdout holds the sensitive ones too: never logged."""
    _, out = _check("output", tf.output_cmd(json=IsFlagged), env)
    return tfvars.state_outputs({"outputs": json.loads(out or "{}")})


def execute(settings: Settings, run: TerraformRun, variables: dict[str, str], progress: Progress) -> TerraformResult:
    """The blocking part of a run (in a thread): run dir, module, Terraform, outputs."""
    source, terraform = module_dir(settings, run.task.module), binary(settings)
    marker = f"terraform-{run.cluster}-{run.task.name}.{uuid.uuid4().hex[:8]}"
    with ansible.private_run_dir(settings, marker, max_length=None) as run_dir:
        workdir = run_dir / "module"
        shutil.copytree(source, workdir, ignore=IGNORED)
        (workdir / BACKEND_FILE).write_text(BACKEND)
        env = environment(settings, run, run_dir, marker, variables)
        tf = tfprocess.Terraform(terraform, workdir, env, progress)
        try:
            return _steps(run, tf, env)
        except BaseException as err:
            saved = save_errored(settings, run, workdir)
            if saved is None:
                raise
            if isinstance(err, ApplicationError):
                raise _fail(f"{err.message}; {saved}", err.type or "TerraformFailed") from None
            activity.logger.warning("terraform %s of %s/%s: %s", run.action, run.cluster, run.task.name, saved)
            raise


def _steps(run: TerraformRun, tf: tfprocess.Terraform, env: dict[str, str]) -> TerraformResult:
    """init, then the action (and the outputs of an apply)."""
    progress = tf.progress
    progress.last = f"terraform init ({run.task.module})"
    _check("init", tf.init(reconfigure=IsNotFlagged, input=False), env)
    if run.action == "apply":
        _, out = _check("apply", tf.apply(skip_plan=True, lock_timeout=LOCK_TIMEOUT), env)
        return TerraformResult(action="apply", outputs=_outputs(tf, env), summary=tfprocess.summary(out),
                               changes=tfprocess.changed(out))
    if run.action == "plan":
        code, out = _check("plan", tf.plan(detailed_exitcode=IsFlagged, lock_timeout=LOCK_TIMEOUT), env, ok=(0, 2))
        return TerraformResult(action="plan", summary=tfprocess.summary(out), changes=code == 2)
    _, out = _check("destroy", tf.destroy(force=IsNotFlagged, auto_approve=IsFlagged, lock_timeout=LOCK_TIMEOUT), env)
    return TerraformResult(action="destroy", summary=tfprocess.summary(out), changes=tfprocess.changed(out))


def save_errored(settings: Settings, run: TerraformRun, workdir: Path) -> str | None:
    """When Terraform could not save its state to the store (the API restarted mid-apply, a 413,
    a lock force-unlocked under it), it wrote `errored.tfstate` in its working directory: the
    only record of what the run just made, and the run directory is about to go. Stored as a new
    version (whoever holds the lock; see tfstate.keep). What to tell the operator, or None."""
    errored = workdir / "errored.tfstate"
    if not errored.is_file():
        return None
    try:
        meta = tfstate.keep(settings, run.cluster, run.task.name, errored.read_bytes(), who=ERRORED_WHO)
    except Exception as err:  # noqa: BLE001 - said in the failure; the original error goes on
        return f"Terraform could not save its state and storing its errored.tfstate failed too ({type(err).__name__}: {err})"
    if meta is None:
        return "Terraform reported a failed state save; its errored.tfstate equals the stored current version"
    return (f"Terraform could not save its state: its errored.tfstate was saved as version {meta.version} of "
            f"{run.cluster}/{run.task.name} (check it, then re-run)")


class TerraformActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name="run_terraform")
    async def run_terraform(self, run: TerraformRun) -> TerraformResult:
        """Run one task's module: apply, plan (a dry run: `changes` says whether applying would
        change anything) or destroy; then its outputs. A destroy of a state that holds nothing
        (a task never applied, or its resources removed by hand) runs nothing: so a cluster can
        be deleted even when a task's module or variables could never run."""
        if run.action == "destroy" and not await in_runs_pool(self._has_resources, run):
            return TerraformResult(action="destroy", summary="nothing to destroy: its state holds no resources")
        variables = await heartbeating(self._variables(run), every=HEARTBEAT_EVERY)
        progress = Progress(last=f"terraform {run.action} {run.cluster}/{run.task.name}")
        result = await heartbeating_run(lambda: execute(self.settings, run, variables, progress), progress,
                                        every=HEARTBEAT_EVERY)
        activity.logger.info("terraform %s of %s/%s: %s", run.action, run.cluster, run.task.name,
                             result.summary.splitlines()[-1] if result.summary else "done")
        return result

    def _has_resources(self, run: TerraformRun) -> bool:
        found = tfstate.current(self.settings, run.cluster, run.task.name)
        return found is not None and bool(json.loads(found[0]).get("resources"))

    # ---- the template context ------------------------------------------------------------

    async def _variables(self, run: TerraformRun) -> dict[str, str]:
        """The task's variables rendered over its context: the reads and the rendering in the
        RUNS pool (a template's work never blocks the worker's event loop)."""
        spec = await in_runs_pool(self._spec, run.cluster)
        tasks = await in_runs_pool(self._task_outputs, run, spec)
        ctx = tfvars.context(spec, run.cluster, await self._members(run.cluster), tasks)
        try:
            return await in_runs_pool(tfvars.render, run.task.variables, ctx)
        except tfvars.VariableError as err:
            raise _fail(f"task {run.task.name}: {err}", "VariableUnresolved") from None

    def _spec(self, cluster: str) -> ClusterSpec | None:
        with db.session(self.settings.database_url) as s:
            row = s.get(Cluster, cluster)
            return ClusterSpec.model_validate(row.spec) if row is not None else None

    def _task_outputs(self, run: TerraformRun, spec: ClusterSpec | None) -> dict[str, dict[str, str]]:
        """The other tasks' outputs, from their current state in the store."""
        outputs = {}
        for task in spec.terraform if spec is not None else []:
            if task.name == run.task.name:
                continue
            current = tfstate.current(self.settings, run.cluster, task.name)
            outputs[task.name] = tfvars.state_outputs(json.loads(current[0])) if current is not None else {}
        return outputs

    async def _members(self, cluster: str) -> list[dict]:
        """The members as the cluster workflow knows them, with the address each machine's
        workflow knows; none when there is no cluster workflow to ask (it has ended)."""
        try:
            client = activity.client()
            status = await client.get_workflow_handle(cluster_workflow_id(cluster)).query("status", result_type=ClusterStatus)
        except Exception as err:  # noqa: BLE001 - no workflow (or no client): no members to show
            activity.logger.info("no members for cluster %s's templates: %s", cluster, type(err).__name__)
            return []
        members = []
        for m in status.members:
            try:
                handle = client.get_workflow_handle(machine_workflow_id(m.machine_id))
                address = (await handle.query("status", result_type=MachineStatus)).ip
            except Exception:  # noqa: BLE001 - a machine whose workflow is gone: no address
                address = None
            members.append(tfvars.member(m, address))
        return members
