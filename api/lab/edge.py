"""The lab's boot edge: registered through the API as catch-all into the cluster `lab` for the
lab's MAC prefix, then `tempered bootedge` in its own namespace, talking to the control plane
over the unix socket."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from api.lab import network
from api.lab.control import Api
from api.lab.state import LabState
from bootedge.images import discovery, runtime
from bootedge.images.common import default_output_dir

NAME = "lab-edge"
MAC_PREFIX = "52:54:00:7e"
HTTP_PORT = 8080


def register(api: Api, state: LabState, cluster: str) -> Path:
    """Register the edge (anew if a previous lab left it, for a fresh token); write its token."""
    if api.exists(f"/v1/edges/{NAME}"):
        api.call("DELETE", f"/v1/edges/{NAME}")
    policy = {"mode": "catch-all", "cluster": cluster, "mac_prefixes": [MAC_PREFIX], "segment": "lab"}
    created = api.call("POST", "/v1/edges", json={"name": NAME, "policy": policy})
    token_file = state.dir / "edge.token"
    token_file.touch(mode=0o600)
    token_file.write_text(created["token"] + "\n")
    state.edge = NAME
    state.save()
    return token_file


def images_dir() -> Path:
    """Where the lab's edge serves images from (discovery/, runtime/): where `tempered image
    build` puts them, so they are built once and shared (`lab down --purge` keeps them)."""
    path = default_output_dir("discovery").parent
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_images(say: Callable[[str], None]) -> None:
    """The discovery and runtime images, built unless up to date (the runtime's first build
    takes minutes: mmdebstrap from the Debian mirror; later ones are a hash check)."""
    for kind, build in (("discovery", discovery.build_discovery), ("runtime", runtime.build_runtime)):
        say(f"{kind} image")
        build(default_output_dir(kind), progress=lambda line, kind=kind: say(f"{kind} image: {line}"))


def start(state: LabState, token_file: Path) -> None:
    """Run `tempered bootedge` in the edge namespace; wait until it serves its script and has
    its policy from the control plane."""
    edge_state = state.dir / "edge"
    log = state.dir / "logs" / "edge.log"
    argv = [
        sys.executable, "-m", "api.cli", "bootedge", "--interface", "eth0",
        "--control-plane", f"unix:{state.api_socket}", "--token-file", str(token_file),
        "--state-dir", str(edge_state), "--images-dir", str(images_dir()), "--policy-refresh", "2",
        "--http-port", str(HTTP_PORT),
    ]
    proc = network.spawn(state, "edge", argv, log, netns=network.EDGE)
    url = f"http://{network.EDGE_IP}:{HTTP_PORT}/boot.ipxe"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the boot edge exited with {proc.returncode}: see {log}")
        probe = subprocess.run(
            ["ip", "netns", "exec", network.SITE, "curl", "-sf", "--max-time", "3", url], capture_output=True
        )
        if probe.returncode == 0 and (edge_state / "config.json").exists():
            return
        time.sleep(0.3)
    raise RuntimeError(f"the boot edge did not come up within 60s: see {log}")
