"""What the Temporal Web UI shows of a machine or a cluster: its user metadata.

A workflow started through api/temporal.py carries a one-line *static summary* and *static
details*, both fixed at start (a continue-as-new does not carry them), and keeps its *current
details* up to date on every transition (`workflow.set_current_details`, served by the built-in
`__temporal_workflow_metadata` query; not a history command, so old histories replay). The Web UI
shows them on a workflow's User Metadata tab and renders details as Markdown.

Everything here is a pure function of the status the workflow already keeps, so both workflows,
the start options and the tests format the same text. The API base URL for links cannot be read
by a workflow: it is passed at start in the memo (`memo()`; a continue-as-new keeps the memo) and
read back with `api_url()`; runs started without it show no links.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from activities.domain.cluster import ClusterSpec, ClusterStatus, Member
    from activities.domain.operations import OperationStart, OperationStatus
    from activities.domain.machine import MachineStatus, Transition

Answer = TypeVar("Answer")
API_MEMO = "tempered_api"  # the memo key that carries the API base URL into the workflows
TRANSITIONS_SHOWN = 5
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|#])")


def memo(api_url: str) -> dict[str, str]:
    """The start memo that lets a workflow link to the API (nothing when it is unknown)."""
    return {API_MEMO: api_url.rstrip("/")} if api_url else {}


def api_url(memo_values: Mapping[str, Any]) -> str:
    return str(memo_values.get(API_MEMO) or "")


# ---- machines ----------------------------------------------------------------------------


def machine_summary(status: MachineStatus) -> str:
    """One line, fixed at start: what identifies the machine then (its MAC, its cluster)."""
    mac = f"MAC {status.mac}" if status.mac else "pre-registered (no MAC yet)"
    cluster = f"cluster {status.cluster}" if status.cluster else "no cluster at start"
    return f"{mac} · {cluster}"


def machine_static_details(status: MachineStatus, api: str) -> str:
    text = (f"Machine `{status.machine_id}`, tracked by Tempered: its state, role, reason and last transitions "
            "are in *current details*, kept current on every transition.")
    links = _machine_links(status, api)
    return f"{text}\n\n{_links(links)}" if links else text


def machine_details(status: MachineStatus, api: str) -> str:
    """State, role, reason, where it is, its last transitions (newest first) and API links.
    (The Web UI renders a single newline as a line break.)"""
    role = f" · role **{status.role}**" if status.role else ""
    where = [f"MAC `{status.mac or '-'}`", f"IP `{status.ip or '-'}`", f"cluster `{status.cluster or '-'}`",
             f"boot {status.boot}"]
    lines = [f"**{status.state}**{role} · node `{status.node_name}`", _text(status.reason) or "-", " · ".join(where)]
    if status.failed_step:
        lines.append(f"Failed step `{status.failed_step}`: `tempered machine retry {status.machine_id}`")
    shown = status.history[-TRANSITIONS_SHOWN:][::-1]
    if shown:
        lines += ["", "**Last transitions** (UTC)", *(_transition(t) for t in shown)]
    links = _machine_links(status, api)
    return "\n".join([*lines, "", _links(links)] if links else lines)


def _transition(t: Transition) -> str:
    reason = f" — {_text(t.reason)}" if t.reason else ""
    return f"- {t.at:%Y-%m-%d %H:%M:%S} `{t.state}`{reason}"


def _machine_links(status: MachineStatus, api: str) -> list[tuple[str, str]]:
    if not api:
        return []
    links = [("machine in the API", f"{api}/v1/machines/{status.machine_id}")]
    if status.cluster:
        links.append((f"cluster {status.cluster}", f"{api}/v1/clusters/{status.cluster}"))
    return links


# ---- clusters ----------------------------------------------------------------------------


def cluster_summary(spec: ClusterSpec) -> str:
    return (f"cluster {spec.name} · quorum {spec.quorum_count} · Kubernetes {spec.kubernetes_version}"
            f" · {spec.join_method} join")


def cluster_static_details(spec: ClusterSpec, api: str) -> str:
    text = f"Cluster `{spec.name}`: its members by state and what it is doing now are in *current details*."
    links = _cluster_links(spec.name, api)
    return f"{text}\n\n{_links(links)}" if links else text


def cluster_details(status: ClusterStatus, doing: list[str], api: str) -> str:
    """Phase and current operation, members by state, join credentials, DNS, API link."""
    now = "; ".join(doing) if doing else "idle"
    ready = [m for m in status.members if m.ready]
    held = [m for m in status.members if not m.ready and m.machine_id in status.held]
    joining = [m for m in status.members if not m.ready and m.machine_id not in status.held]
    lines = [f"**{status.phase}** · now: {_text(now)}", *_credentials(status)]
    if status.deletion is not None:
        lines.append(f"**Deleting** ({status.deletion.step}): {_text(status.deletion.progress)}")
        if status.deletion.dns:
            lines.append(f"DNS: {_text(status.deletion.dns)}")
    if status.dns:
        lines.append(f"DNS: {_text(status.dns)}")
    if status.operation is not None:
        op = status.operation
        lines.append(f"**Operation** {op.kind} `{op.workflow_id}` ({op.state}): {_text(op.progress)}")
    lines += _tasks(status)
    lines += ["", f"**Members** ({len(status.members)}, quorum {status.spec.quorum_count})",
              _members("ready", ready), _members("admitted, not ready yet", joining),
              _members("held until the control plane is up", held)]
    if status.master_joining:
        lines.append(f"- master joining now: `{status.master_joining}`")
    links = _cluster_links(status.spec.name, api)
    return "\n".join([*lines, "", _links(links)] if links else lines)


def _tasks(status: ClusterStatus) -> list[str]:
    """Terraform tasks: a failed one as `failed:<task>` with its reason and the retry command."""
    lines = [f"- `{t.name}` ({t.stage}): {t.state}" for t in status.tasks]
    failed = next((t for t in status.tasks if t.state == "failed"), None)
    if failed is not None:
        lines.insert(0, f"**failed:{failed.name}**: {_text(failed.reason)} · retry: "
                        f"`tempered cluster retry {status.spec.name}`")
    return ["", "**Terraform tasks**", *lines] if lines else []


def _members(title: str, members: list[Member]) -> str:
    names = ", ".join(f"`{m.node_name or m.machine_id}` ({m.role})" for m in members)
    return f"- {title} ({len(members)}): {names or '-'}"


def _credentials(status: ClusterStatus) -> list[str]:
    lines = []
    creds = status.credentials
    if creds.token_id is not None and creds.token_expires_at is not None:
        lines.append(f"Join token #{creds.token_id}, expires {creds.token_expires_at:%Y-%m-%d %H:%M} UTC")
    if status.credentials_error:
        lines.append(f"**{_text(status.credentials_error)}**")
    return lines


def _cluster_links(name: str, api: str) -> list[tuple[str, str]]:
    return [(f"cluster {name} in the API", f"{api}/v1/clusters/{name}")] if api else []


# ---- cluster operations (workflows/operation.py) ------------------------------------------------


def operation_summary(start: OperationStart) -> str:
    op = start.status
    target = f" to {start.kubernetes_version}" if start.kubernetes_version else ""
    nodes = f"{len(op.nodes)} node{'' if len(op.nodes) == 1 else 's'}"
    return f"{op.kind}{target} of cluster {start.cluster} · {nodes} · batch {op.request.batch}"


def operation_static_details(start: OperationStart, api: str) -> str:
    text = (f"Day-2 operation `{start.status.workflow_id}` on cluster `{start.cluster}`: its state, progress and "
            "each node's step are in *current details*. Pause, resume or abort it with "
            f"`tempered cluster operation {start.cluster} pause|resume|abort`.")
    links = _cluster_links(start.cluster, api)
    return f"{text}\n\n{_links(links)}" if links else text


def operation_details(op: OperationStatus, api: str) -> str:
    """State, progress, the error it waits on, and each node's step (in the order it acts)."""
    lines = [f"**{op.state}** · {_text(op.progress) or '-'}"]
    if op.error:
        lines.append(f"**{_text(op.error)}**")
    lines += ["", f"**Nodes** ({len(op.nodes)})"]
    lines += [f"- `{n.node_name or n.machine_id}` ({n.role}): {n.step}" + (f" — {_text(n.reason)}" if n.reason else "")
              for n in op.nodes]
    cluster = op.workflow_id.split(":")[1] if op.workflow_id.count(":") == 2 else ""
    links = _cluster_links(cluster, api) if cluster else []
    return "\n".join([*lines, "", _links(links)] if links else lines)


class Doing:
    """What a workflow's steps are doing now, in the order they started (steps overlap): the
    "now:" of a cluster's current details. `changed` sets the details again (the workflow's
    `_show`); this class touches no Temporal API, so it is tested on its own."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.operations: list[str] = []
        self._changed = changed

    @contextlib.contextmanager
    def busy(self, operation: str) -> Iterator[None]:
        """List `operation` while it lasts: until it returns, fails or is cancelled (`finally`:
        asyncio.CancelledError is a BaseException). On an eviction from the worker's cache the
        SDK refuses the details update with its own BaseException, which ends the task as the
        cancellation would have."""
        self.operations.append(operation)
        self._changed()
        try:
            yield
        finally:
            self.operations.remove(operation)
            self._changed()

    def step(self, operation: str, run: Callable[[], Awaitable[Answer]]) -> Callable[[], Awaitable[Answer]]:
        """`run` as a step (workflows/steps.py) that lists `operation` while it runs."""

        async def listed() -> Answer:
            with self.busy(operation):
                return await run()

        return listed


# ---- Markdown ----------------------------------------------------------------------------


def _links(links: list[tuple[str, str]]) -> str:
    return " · ".join(f"[{title}]({url})" for title, url in links)


def _text(value: str) -> str:
    """Free text (reasons, errors) shown as text: Markdown's special characters escaped."""
    return _MARKDOWN.sub(r"\\\1", value)
