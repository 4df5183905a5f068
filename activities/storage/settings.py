"""Where every process of the stack finds its configuration.

All settings come from the environment so that one machine running `tempered up` and a site
running each part on its own hosts (a Temporal cluster, PostgreSQL, several API replicas) use
the same code. Defaults are the embedded single-machine stack under `$TEMPERED_HOME`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TASK_QUEUE = "tempered"


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    temporal_address: str
    temporal_namespace: str
    temporal_ui_url: str
    api_host: str
    api_port: int
    api_url: str
    ssh_proxy_command: str | None = None  # reach nodes through a bastion, e.g. "ssh -W %h:%p jump"
    worker_metrics: str | None = None  # host:port of the worker's /metrics; None: not served

    @property
    def admin_token_file(self) -> Path:
        return self.home / "admin-token"

    @property
    def temporal_db(self) -> Path:
        return self.home / "temporal.db"

    @property
    def runs_dir(self) -> Path:
        """Private directories of Ansible runs (they hold the SSH key while a run lasts)."""
        return self.home / "runs"

    def private_home(self) -> Path:
        """Create `$TEMPERED_HOME` (0700, an older one is tightened) and make this process and
        its children create files for the owner only (umask 077): the databases, their WAL
        files, the logs and the run directories hold secrets or what leads to them."""
        os.umask(0o077)
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.home.chmod(0o700)
        for path in [*self.home.glob("*.db"), *self.home.glob("*.db-*"), *self.home.glob("logs/*.log")]:
            try:
                path.chmod(0o600)
            except FileNotFoundError:  # a journal the running Temporal server just removed
                continue
        return self.home

    def workflow_url(self, workflow_id: str) -> str:
        """The page of one workflow in the Temporal Web UI."""
        return f"{self.temporal_ui_url}/namespaces/{self.temporal_namespace}/workflows/{workflow_id}"


def load() -> Settings:
    """Read the settings from the environment (cheap; call it where you need it)."""
    home = Path(os.environ.get("TEMPERED_HOME", Path.home() / ".tempered")).expanduser()
    api_host = os.environ.get("TEMPERED_API_HOST", "127.0.0.1")
    api_port = int(os.environ.get("TEMPERED_API_PORT", "8000"))
    return Settings(
        home=home,
        database_url=os.environ.get("DATABASE_URL", f"sqlite:///{home / 'tempered.db'}"),
        temporal_address=os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233"),
        temporal_namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
        temporal_ui_url=os.environ.get("TEMPERED_TEMPORAL_UI", "http://127.0.0.1:8233").rstrip("/"),
        api_host=api_host,
        api_port=api_port,
        api_url=os.environ.get("TEMPERED_API", f"http://{api_host}:{api_port}").rstrip("/"),
        ssh_proxy_command=os.environ.get("TEMPERED_SSH_PROXY_COMMAND") or None,
        worker_metrics=_off_or(os.environ.get("TEMPERED_WORKER_METRICS"), f"127.0.0.1:{api_port + 1}"),
    )


def _off_or(value: str | None, default: str) -> str | None:
    """An address setting: unset means `default`, "off" (or empty) means not served."""
    if value is None:
        return default
    return None if value.strip().lower() in ("", "off") else value.strip()
