"""Run one playbook of `infra/ansible/` with ansible-runner, the way every Tempered run needs it.

Each run gets its own private data directory under `$TEMPERED_HOME/runs` (0700; it holds the
control plane's SSH key and the extra variables, which may carry join secrets). It is deleted
when the run ends, however it ends; the run holds a lock on it meanwhile, so a worker starting
after a crash sweeps the directories no live run holds (once what those runs left running, say a
`kubeadm init` that must not be cut short, has ended). Hosts are reached as
`tempered` with the control plane's key, and their SSH host keys are *pinned*: the
known_hosts file holds only the keys the nodes posted in their phone home, and strict checking
is on, so Ansible never talks to whatever happens to answer on a node's address.

The run is synchronous (ansible-runner blocks); the activities call it through heartbeat.heartbeating_run, which watches its
`heartbeat.Progress` to heartbeat and to ask for cancellation.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import ansible_runner
from temporalio.exceptions import ApplicationError
import yaml

from activities import metrics, sshkey
from activities.heartbeat import Progress
from activities.storage.settings import Settings

PLAYBOOKS = Path(__file__).resolve().parent.parent / "infra" / "ansible"
MAX_DETAIL = 1500  # characters of a failed task's output kept in the summary
MAX_RUN_DIR = 72  # characters: ssh's control sockets (dir/cp/<10>.<16 random>) must fit in 108


@dataclass
class Host:
    name: str  # the Kubernetes node name, also the inventory name
    address: str
    host_key: str  # the OpenSSH public key line its sshd presents
    groups: list[str]


@dataclass
class Failure:
    host: str
    task: str
    detail: str
    unreachable: bool = False

    def __str__(self) -> str:
        what = "is unreachable" if self.unreachable else f"failed task '{self.task}'"
        return f"{self.host} {what}: {self.detail}"


@dataclass
class Outcome:
    status: str  # successful | failed | canceled | timeout
    failures: list[Failure]
    stats: dict  # the playbook's set_stats data
    changed: dict[str, list[str]]  # host -> names of tasks that changed something

    @property
    def ok(self) -> bool:
        return self.status == "successful" and not self.failures

    def summary(self) -> str:
        if self.ok:
            return "ok"
        if self.failures:
            return "; ".join(str(f) for f in self.failures)
        return f"ansible-playbook ended {self.status}"


def _detail(result: dict) -> str:
    """What an operator needs from a failed task: stderr, else the module's message."""
    if result.get("censored"):
        return "(output hidden: the task handles secrets)"
    parts = [str(result.get(k) or "").strip() for k in ("stderr", "msg")]
    text = next((p for p in parts if p), "") or str(result.get("stdout") or "").strip()
    rc = result.get("rc")
    text = f"{text} (exit {rc})" if rc not in (None, 0) else text
    return text if len(text) <= MAX_DETAIL else "..." + text[-MAX_DETAIL:]


def _inventory(hosts: list[Host], run_dir: Path, settings: Settings) -> dict:
    ssh_args = [
        f"-o UserKnownHostsFile={run_dir / 'known_hosts'}",
        "-o StrictHostKeyChecking=yes",
        "-o IdentitiesOnly=yes",
        "-o IdentityAgent=none",
        "-o BatchMode=yes",
        "-o ConnectTimeout=10",
    ]
    if settings.ssh_proxy_command:
        ssh_args.append(shlex.quote(f"-o ProxyCommand={settings.ssh_proxy_command}"))
    groups: dict[str, dict] = {}
    for host in hosts:
        for group in host.groups:
            groups.setdefault(group, {"hosts": {}})["hosts"][host.name] = {}
    return {
        "all": {
            "hosts": {h.name: {"ansible_host": h.address} for h in hosts},
            "children": groups,
            "vars": {
                "ansible_user": "tempered",
                "ansible_become": True,
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_private_key_file": str(run_dir / "id_ed25519"),
                "ansible_ssh_common_args": " ".join(ssh_args),
            },
        }
    }


def _prepare(run_dir: Path, hosts: list[Host], settings: Settings) -> Path:
    key = run_dir / "id_ed25519"
    key.write_text(sshkey.private_key(settings))
    key.chmod(0o600)
    (run_dir / "known_hosts").write_text("".join(f"{h.address} {h.host_key}\n" for h in hosts))
    inventory = run_dir / "inventory.yml"
    inventory.write_text(yaml.safe_dump(_inventory(hosts, run_dir, settings)))
    return inventory


def _env(run_dir: Path, marker: str) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ANSIBLE_HOST_KEY_CHECKING": "True",  # without it runner turns pinning off
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(run_dir / "cp"),
        "ANSIBLE_LOCAL_TEMP": str(run_dir / "tmp"),
        "ANSIBLE_ROLES_PATH": str(PLAYBOOKS / "roles"),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "TEMPERED_ANSIBLE_RUN": marker,  # finds what the run left behind
    }


def _marked(matches: Callable[[str], bool]) -> list[int]:
    """The PIDs of processes whose TEMPERED_ANSIBLE_RUN marker `matches` (ours excluded)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours
            continue
        marker = next((e[len(b"TEMPERED_ANSIBLE_RUN="):] for e in environ if e.startswith(b"TEMPERED_ANSIBLE_RUN=")), None)
        if marker is not None and matches(marker.decode(errors="replace")):
            found.append(int(proc.name))
    return found


def stop_runs(matches: Callable[[str], bool]) -> None:
    """SIGTERM every process whose TEMPERED_ANSIBLE_RUN marker `matches`: ssh's ControlPersist
    masters always, after a cancellation ansible-playbook's workers too, and the processes of an
    earlier attempt that must not finish. Closing the masters' SSH connections is what hangs up
    on a command still running on a node (a task run without pipelining)."""
    for pid in _marked(matches):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


def _stop_leftovers(marker: str) -> None:
    stop_runs(lambda m: m == marker)


@contextmanager
def private_run_dir(settings: Settings, marker: str, max_length: int | None = MAX_RUN_DIR) -> Iterator[Path]:
    """A private directory for one run, locked while the run lasts, removed on every way out
    (with the processes whose TEMPERED_ANSIBLE_RUN is `marker`); `sweep` removes the ones a
    killed worker left. Terraform runs use it too (no ssh sockets there: `max_length` None)."""
    settings.runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir = Path(tempfile.mkdtemp(dir=settings.runs_dir))
    try:
        if max_length is not None and len(str(run_dir)) > max_length:
            raise ApplicationError(
                f"$TEMPERED_HOME is too deep for ssh's control sockets: {run_dir} (max {MAX_RUN_DIR} characters)",
                type="RunDirTooDeep", non_retryable=True,
            )
        (run_dir / ".marker").write_text(marker)
        # Locked before it is named .lock, so a sweep never finds it unheld (not inherited by children).
        lock = os.open(run_dir / ".lock.new", os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.rename(run_dir / ".lock.new", run_dir / ".lock")
        try:
            yield run_dir
        finally:
            _stop_leftovers(marker)
            os.close(lock)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def sweep(settings: Settings, grace: float = 60.0) -> list[str]:
    """Remove the run directories that no live run holds (left by a worker that was killed).
    Returns their names. A directory without its lock yet is left alone for `grace` seconds (a
    run is just starting). A killed worker's ansible-playbook may still be running, say a
    `kubeadm init` that must not be cut short: its directory goes once its processes are gone."""
    removed = []
    for run_dir in sorted(settings.runs_dir.glob("*")) if settings.runs_dir.is_dir() else []:
        try:
            if _sweep_one(run_dir, grace):
                removed.append(run_dir.name)
        except OSError:  # removed meanwhile by its own run
            continue
    return removed


def _sweep_one(run_dir: Path, grace: float) -> bool:
    """Start removing `run_dir` if no live run holds it; True if it goes."""
    try:
        lock = os.open(run_dir / ".lock", os.O_WRONLY)
    except FileNotFoundError:
        if time.time() - run_dir.stat().st_mtime < grace:
            return False
        lock = None
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        marker = (run_dir / ".marker").read_text() if (run_dir / ".marker").exists() else None
        threading.Thread(target=_remove_when_done, args=(run_dir, marker), daemon=True).start()
        return True
    except BlockingIOError:  # a live run of another worker on this home
        return False
    finally:
        if lock is not None:
            os.close(lock)


def _remove_when_done(run_dir: Path, marker: str | None, poll: float = 1.0) -> None:
    while marker is not None and _marked(lambda m: m == marker):
        time.sleep(poll)
    shutil.rmtree(run_dir, ignore_errors=True)


def run(
    playbook: str, hosts: list[Host], extravars: dict, settings: Settings, run_id: str, progress: Progress
) -> Outcome:
    """Run `infra/ansible/<playbook>` against `hosts`; never raises for a failed play."""
    marker = f"{run_id}.{uuid.uuid4().hex[:8]}"  # this attempt only: a retry never stops another
    failures: list[Failure] = []
    changed: dict[str, list[str]] = {}
    stats: dict = {}

    def on_event(event: dict) -> bool:
        data = event.get("event_data") or {}
        kind, host, task = event.get("event"), data.get("host", ""), data.get("task", "")
        if kind == "runner_on_start":
            progress.last = f"{host}: {task}"
        elif kind == "runner_on_ok" and (data.get("res") or {}).get("changed"):
            changed.setdefault(host, []).append(task)
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            failures.append(Failure(host, task, _detail(data.get("res") or {})))
        elif kind == "runner_on_unreachable":
            failures.append(Failure(host, task, _detail(data.get("res") or {}), unreachable=True))
        elif kind == "playbook_on_stats":
            stats.update((data.get("artifact_data") or {}))
        return False  # keep nothing on disk beyond the run

    timing = metrics.timed(metrics.ANSIBLE_SECONDS, playbook=playbook, status="error")
    with private_run_dir(settings, marker) as run_dir, timing as measured:
        inventory = _prepare(run_dir, hosts, settings)
        result = ansible_runner.run(
            private_data_dir=str(run_dir),
            project_dir=str(PLAYBOOKS),
            playbook=playbook,
            inventory=str(inventory),
            extravars=extravars,
            envvars=_env(run_dir, marker),
            settings={"pexpect_timeout": 0.2, "suppress_ansible_output": True},
            event_handler=on_event,
            cancel_callback=progress.cancel.is_set,
            quiet=True,
            ident=run_id,
        )
        measured["status"] = result.status
        return Outcome(result.status, failures, stats, changed)

