"""Settings: every address derives from the environment (the Web UI link from TEMPORAL_ADDRESS,
the API's URL from where it binds, an explicit value always winning), a bad value names its
variable, and TEMPORAL_TLS_* build the TLSConfig that `connect` hands to Temporal."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from activities.storage import settings as settings_mod
from api import stack
from api.temporal import TemporalSettingsError, connect, tls_config
from tests.tlsfiles import TlsFiles

ADDRESS_VARS = (
    "TEMPORAL_ADDRESS", "TEMPERED_TEMPORAL_UI", "TEMPERED_API", "TEMPERED_API_HOST", "TEMPERED_API_PORT",
    "TEMPORAL_TLS", "TEMPORAL_TLS_CA", "TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY", "TEMPORAL_TLS_SERVER_NAME",
    "TEMPERED_WORKER_METRICS", "TEMPERED_WORKER_WORKFLOW_POLLERS", "TEMPERED_WORKER_WORKFLOW_TASKS",
    "TEMPERED_WORKER_CACHED_WORKFLOWS", "TEMPERED_WORKER_STICKY_TIMEOUT",
)


@pytest.fixture
def env(monkeypatch):
    """A clean environment for the address settings; returns a setter that loads them."""
    for name in ADDRESS_VARS:
        monkeypatch.delenv(name, raising=False)

    def load(**values: str) -> settings_mod.Settings:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return settings_mod.load()

    return load


def test_the_defaults_are_the_embedded_stack(env):
    s = env()
    assert s.temporal_address == "127.0.0.1:7233"
    assert s.temporal_ui_url == "http://127.0.0.1:8233"
    assert (s.api_host, s.api_port, s.api_url) == ("127.0.0.1", 8000, "http://127.0.0.1:8000")


def test_the_web_ui_follows_a_moved_temporal(env):
    s = env(TEMPORAL_ADDRESS="127.0.0.1:7400")
    assert s.temporal_ui_url == "http://127.0.0.1:8400" and s.temporal_ui_port == 8400
    assert s.workflow_url("cluster:a") == "http://127.0.0.1:8400/namespaces/default/workflows/cluster:a"
    assert env(TEMPORAL_ADDRESS="temporal.example:7233").temporal_ui_url == "http://temporal.example:8233"
    assert env(TEMPORAL_ADDRESS="[::1]:7300").temporal_ui_url == "http://[::1]:8300"
    assert env(TEMPORAL_ADDRESS="0.0.0.0:7300").temporal_ui_url == "http://127.0.0.1:8300"  # bound everywhere


def test_an_explicit_web_ui_wins(env):
    s = env(TEMPORAL_ADDRESS="127.0.0.1:7400", TEMPERED_TEMPORAL_UI="https://temporal.example/")
    assert s.temporal_ui_url == "https://temporal.example"


def test_the_api_url_follows_where_the_api_binds(env):
    assert env(TEMPERED_API_PORT="8123").api_url == "http://127.0.0.1:8123"
    assert env(TEMPERED_API_HOST="0.0.0.0").api_url == "http://127.0.0.1:8123"  # a wildcard is reached on loopback
    assert env(TEMPERED_API_HOST="::").api_url == "http://[::1]:8123"
    assert env(TEMPERED_API_HOST="10.0.0.5").api_url == "http://10.0.0.5:8123"
    assert env(TEMPERED_API="https://tempered.example/").api_url == "https://tempered.example"


def test_the_api_url_follows_the_bind_flags(env):
    """`tempered api --host/--port` override TEMPERED_API_HOST/PORT: its links say where it listens."""
    s = settings_mod.binding_api(env(TEMPERED_API_PORT="18400"), port=18499)
    assert (s.api_host, s.api_port, s.api_url) == ("127.0.0.1", 18499, "http://127.0.0.1:18499")
    s = settings_mod.binding_api(env(), host="0.0.0.0")
    assert (s.api_host, s.api_port, s.api_url) == ("0.0.0.0", 18400, "http://127.0.0.1:18400")
    assert settings_mod.binding_api(env(), None, None) == env()  # no flag: the environment's
    explicit = settings_mod.binding_api(env(TEMPERED_API="https://tempered.example"), port=18499)
    assert (explicit.api_port, explicit.api_url) == (18499, "https://tempered.example")  # behind a proxy


def test_worker_metrics_is_host_port_or_off(env):
    assert env(TEMPERED_API_PORT="8123").worker_metrics == "127.0.0.1:8124"  # default: next to the API
    assert env(TEMPERED_WORKER_METRICS="0.0.0.0:9464").worker_metrics == "0.0.0.0:9464"
    assert env(TEMPERED_WORKER_METRICS="off").worker_metrics is None
    with pytest.raises(ValueError, match="TEMPERED_WORKER_METRICS='localhost' is not host:port"):
        env(TEMPERED_WORKER_METRICS="localhost")  # was a crash at int(port) in the worker


def test_worker_tuning_is_a_whole_number(env):
    """The worker's workflow pollers and cache (api/worker.py `workflow_tuning`): defaults sized
    for a fleet, a value below the least or not a number a settings error naming its variable."""
    s = env()
    assert (s.worker_workflow_pollers, s.worker_workflow_tasks, s.worker_cached_workflows) == (20, 20, 5000)
    assert s.worker_sticky_timeout_s == 10
    s = env(TEMPERED_WORKER_WORKFLOW_POLLERS="8", TEMPERED_WORKER_CACHED_WORKFLOWS="0")
    assert (s.worker_workflow_pollers, s.worker_cached_workflows) == (8, 0)
    with pytest.raises(ValueError, match="TEMPERED_WORKER_WORKFLOW_POLLERS: '1' is not a whole number of at least 2"):
        env(TEMPERED_WORKER_WORKFLOW_POLLERS="1")
    with pytest.raises(ValueError, match="TEMPERED_WORKER_CACHED_WORKFLOWS: 'many'"):
        env(TEMPERED_WORKER_WORKFLOW_POLLERS="8", TEMPERED_WORKER_CACHED_WORKFLOWS="many")


def test_an_empty_variable_means_unset(env):
    """An EnvironmentFile line `TEMPORAL_ADDRESS=` leaves the default in place."""
    s = env(TEMPORAL_ADDRESS="", TEMPERED_API_PORT="", TEMPERED_TEMPORAL_UI="")
    assert (s.temporal_address, s.api_port, s.temporal_ui_url) == ("127.0.0.1:7233", 8000, "http://127.0.0.1:8233")


@pytest.mark.parametrize(
    ("name", "value"),
    [("TEMPORAL_ADDRESS", "temporal.example"), ("TEMPORAL_ADDRESS", "host:port"), ("TEMPERED_API_PORT", "http"),
     ("TEMPERED_API_PORT", "70000")],
)
def test_a_bad_address_names_its_variable(env, name, value):
    with pytest.raises(ValueError, match=f"{name}='{value}'"):
        env(**{name: value})


def test_the_dev_server_listens_where_the_settings_say(env):
    command = stack.temporal_command(env(TEMPORAL_ADDRESS="127.0.0.1:7400"))
    flags = dict(zip(command[3::2], command[4::2]))
    assert (flags["--ip"], flags["--port"], flags["--ui-port"]) == ("127.0.0.1", "7400", "8400")
    # a write-ahead log, synced on every commit (README: What `tempered up` starts; Scaling out)
    pragmas = [command[i + 1] for i, flag in enumerate(command) if flag == "--sqlite-pragma"]
    assert pragmas == ["journal_mode=wal", "synchronous=full"]
    lab = stack.temporal_command(env(), port=7300, ui_port=8300)  # the lab passes its own
    assert lab[lab.index("--port") + 1] == "7300" and lab[lab.index("--ui-port") + 1] == "8300"


def test_no_tls_unless_asked(env):
    assert tls_config(env()) is False


def test_tls_settings_build_the_tls_config(env, tmp_path):
    files = TlsFiles(tmp_path)
    s = env(
        TEMPORAL_TLS_CA=str(files.ca), TEMPORAL_TLS_CERT=str(files.client_cert),
        TEMPORAL_TLS_KEY=str(files.client_key), TEMPORAL_TLS_SERVER_NAME="temporal.example",
    )
    tls = tls_config(s)
    assert tls.server_root_ca_cert == files.ca.read_bytes()
    assert tls.client_cert == files.client_cert.read_bytes()
    assert tls.client_private_key == files.client_key.read_bytes()
    assert tls.domain == "temporal.example"


def test_tls_on_its_own_uses_the_system_cas(env):
    tls = tls_config(env(TEMPORAL_TLS="true"))
    assert tls is not False and tls.server_root_ca_cert is None and tls.client_cert is None


def test_a_bad_ca_path_is_a_clear_error(env, tmp_path):
    s = env(TEMPORAL_TLS_CA=str(tmp_path / "missing-ca.pem"))
    with pytest.raises(TemporalSettingsError, match=r"TEMPORAL_TLS_CA=.*missing-ca.pem: cannot read it \(No such file"):
        tls_config(s)
    with pytest.raises(TemporalSettingsError, match="TEMPORAL_TLS_CA"):  # fails at once, no 60 attempts
        asyncio.run(connect(s, attempts=1))


def test_a_file_that_is_not_pem_is_a_clear_error(env, tmp_path):
    (tmp_path / "ca.der").write_bytes(b"\x30\x82\x01\x0a")
    with pytest.raises(TemporalSettingsError, match="TEMPORAL_TLS_CA=.*not a PEM file"):
        tls_config(env(TEMPORAL_TLS_CA=str(tmp_path / "ca.der")))


def test_a_client_certificate_needs_its_key(env, tmp_path):
    files = TlsFiles(tmp_path)
    with pytest.raises(TemporalSettingsError, match="TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together"):
        tls_config(env(TEMPORAL_TLS_CERT=str(files.client_cert)))


def test_help_texts_show_the_current_addresses():
    """`--help` renders what this environment resolves to, never a port of its own."""
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "TEMPORAL_ADDRESS": "127.0.0.1:7411",
           "TEMPERED_API_PORT": "8122", "COLUMNS": "200"}
    shown = {
        command: subprocess.run(
            [sys.executable, "-m", "api.cli", command, "--help"], env=env, capture_output=True, text=True, check=True
        ).stdout
        for command in ("up", "temporal", "api", "bootedge")
    }
    assert "127.0.0.1:7411" in shown["up"] and "http://127.0.0.1:8411" in shown["up"]
    assert "http://127.0.0.1:8122" in shown["up"] and "http://127.0.0.1:8411" in shown["temporal"]
    assert "127.0.0.1:8122" in shown["api"] and "now http://127.0.0.1:8122" in shown["bootedge"]
    for text in shown.values():
        assert not any(port in text for port in (":8000", ":8233", ":7233")), text
