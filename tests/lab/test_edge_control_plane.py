"""`tempered bootedge` without --control-plane talks to $TEMPERED_API (the one source for the
API's address), and TEMPERED_CONTROL_PLANE wins over it. The edge runs in a network namespace
and reaches the session's API over its unix socket, so nothing touches the root network."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import catch_all_edge
from tests.netlab import Lab, lab_available
from tests.servers import VENV_BIN, stop

pytestmark = [
    pytest.mark.skipif(lab_available() is not None, reason=lab_available() or ""),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq-base is not installed"),
]
PREFIX = "52:54:00:ac"
UNREACHABLE = "http://127.0.0.1:9"  # discard: nothing answers there, inside the namespace or out


def _edge_comes_up(lab: Lab, ns: str, env: dict, token_file: Path, state: Path, log: Path) -> str:
    """Start the edge with no --control-plane; once it holds the policy it fetched, stop it and
    return its log."""
    shutil.rmtree(state, ignore_errors=True)
    proc = lab.run(
        ns,
        [str(VENV_BIN / "tempered"), "bootedge", "--interface", "eth0", "--token-file", str(token_file),
         "--state-dir", str(state), "--policy-refresh", "0.5"],
        log, env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not (state / "config.json").exists():  # written once the control plane answered
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        stop(proc)
    return log.read_text()


def test_the_edge_defaults_to_tempered_api(api_server, uds_api, tmp_path, unique):
    token_file = tmp_path / "edge-token"
    catch_all_edge(api_server, unique, PREFIX, token_file)
    base = {k: v for k, v in os.environ.items() if k not in ("TEMPERED_CONTROL_PLANE", "TEMPERED_EDGE_TOKEN")}
    lab = Lab()
    try:
        edge_ns, client_ns = lab.netns("edge"), lab.netns("client")
        lab.veth(edge_ns, client_ns, 3, 50)
        state = tmp_path / "state"
        printed = _edge_comes_up(lab, edge_ns, base | {"TEMPERED_API": uds_api}, token_file, state, tmp_path / "a.log")
        assert f"control plane {uds_api}" in printed
        wins = base | {"TEMPERED_API": UNREACHABLE, "TEMPERED_CONTROL_PLANE": uds_api}
        printed = _edge_comes_up(lab, edge_ns, wins, token_file, state, tmp_path / "b.log")
        assert f"control plane {uds_api}" in printed and UNREACHABLE not in printed
    finally:
        lab.close()
