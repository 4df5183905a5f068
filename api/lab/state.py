"""The lab's state file, `$TEMPERED_HOME/lab/lab.json`: what `tempered lab up` started.

Every part is recorded the moment it exists (a namespace right after `ip netns add`, a process
right after it is spawned), and the file is replaced atomically each time. So whatever killed
`up` half-way, `down` finds what there is to stop. `down` also looks by the lab's name prefix
and by the marker in each process's environment, so a lab whose file was lost still goes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from activities.storage import settings as settings_mod

MARKER = "TEMPERED_LAB"  # set in every lab process's environment to the lab directory: proof it is ours


@dataclass
class Proc:
    """A process the lab started: its PID and the argv it runs (checked against /proc before a kill)."""

    pid: int
    argv: list[str]
    netns: str | None = None


@dataclass
class LabState:
    dir: Path
    namespaces: list[str] = field(default_factory=list)
    bridge: str | None = None  # "NETNS/DEVICE"
    processes: dict[str, Proc] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)  # role -> address on the lab LAN
    api_url: str | None = None
    api_socket: str | None = None
    ui_url: str | None = None
    cluster: str | None = None
    edge: str | None = None
    dns: dict[str, str] = field(default_factory=dict)  # zone, server, views
    external_control_plane: bool = False
    complete: bool = False  # every part is up

    @property
    def path(self) -> Path:
        return self.dir / "lab.json"

    def save(self) -> None:
        """Write atomically (a temporary file renamed over the old one)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = asdict(self)
        data["dir"] = str(self.dir)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)

    def add_process(self, name: str, pid: int, argv: list[str], netns: str | None = None) -> None:
        self.processes[name] = Proc(pid, argv, netns)
        self.save()

    def add_namespace(self, name: str) -> None:
        self.namespaces.append(name)
        self.save()


def lab_dir() -> Path:
    return settings_mod.load().home / "lab"


def load(directory: Path | None = None) -> LabState | None:
    """The recorded lab, or None when there is no state file. A file cut short (a lab killed
    while writing it is not possible with the rename, but a disk can fill) reads as an empty lab."""
    directory = directory or lab_dir()
    path = directory / "lab.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return LabState(directory)
    data.pop("dir", None)
    procs = {name: Proc(**p) for name, p in data.pop("processes", {}).items()}
    known = {k: v for k, v in data.items() if k in LabState.__dataclass_fields__}
    return LabState(directory, processes=procs, **known)
