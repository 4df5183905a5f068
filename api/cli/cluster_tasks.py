"""`tempered cluster retry` and `tempered cluster plan`, the `--terraform FILE` of `cluster create`,
and the tasks `cluster show` prints (the spec's Terraform tasks: workflows/terraform_steps.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from api.cli.client import Exit, call, fail, out, table

TerraformOption = typer.Option(
    None, "--terraform", help="A YAML or JSON file: the cluster's Terraform tasks, a list of "
    "{name, module, stage, variables, outputs} (README: Tasks in the cluster spec).",
)


def load_tasks(path: Optional[Path]) -> list[Any]:
    """The task list in `path` (YAML is a superset of JSON); [] without one."""
    if path is None:
        return []
    try:
        tasks = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail([f"--terraform {path}: {e}"], Exit.INVALID)
    if not isinstance(tasks, list):
        fail([f"--terraform {path}: a list of tasks is expected"], Exit.INVALID)
    return tasks


def print_tasks(view: dict) -> None:
    """State, reason and outputs of each task; a failed one with the retry command."""
    if view.get("endpoint"):
        out.print(f"control-plane endpoint: {view['endpoint']}", markup=False)
    if view.get("failed"):
        out.print(f"[red]{view['failed']}[/red]: retry with 'tempered cluster retry {view['spec']['name']}'")
    if view.get("tasks"):
        table("Terraform tasks", ["task", "stage", "state", "runs", "reason", "outputs"], [
            [t["name"], t["stage"], t["state"], t["runs"], t["reason"], _outputs(t["outputs"])] for t in view["tasks"]
        ])


def _outputs(outputs: dict) -> str:
    return json.dumps(outputs) if outputs else "-"


def cluster_retry(name: str) -> None:
    """Run the cluster's failed Terraform task again (its stage goes on once it is applied)."""
    view = call("POST", f"/v1/clusters/{name}/retry", progress=f"retrying cluster {name}'s failed task")
    what = f"task {view['failed'].removeprefix('failed:')}" if view.get("failed") else "the failed step"
    out.print(f"cluster {name}: {what} runs again; follow with 'tempered cluster show {name}'", markup=False)
    print_tasks(view)


def cluster_plan(name: str, task: str) -> None:
    """Plan one of the cluster's Terraform tasks (a dry run): what applying it would change."""
    plan = call("POST", f"/v1/clusters/{name}/terraform/{task}/plan", progress=f"terraform plan of {task}")
    out.print(plan["summary"] or "(no changes)", markup=False)
