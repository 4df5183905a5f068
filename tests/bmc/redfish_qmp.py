"""sushy-tools' Redfish emulator, its systems backed by a QEMU VM's QMP socket (or its own fake
driver), on 127.0.0.1 at a free port, with HTTP basic auth from an htpasswd file.

    python -m tests.bmc.redfish_qmp --auth-file FILE (--qmp SOCKET | --fake | --memory FILE) [--state-dir DIR]
        [--tls CERT KEY]

It prints `listening PORT` once it serves. sushy-tools picks its systems driver in
`Application.systems` (main.py: fake, OpenStack, Ironic or libvirt); this launcher replaces
that property with one System of ours, `QmpSystems`, which presses the VM's buttons through
Tempered's own QMP driver: a Redfish ForceRestart really resets the VM.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import uuid as uuidlib
from pathlib import Path
from typing import Any

from sushy_tools import error
from sushy_tools.emulator import main as emulator
from sushy_tools.emulator.resources.systems.base import AbstractSystemsDriver
from werkzeug.serving import make_server

from activities.power import BmcRefused, PowerError
from activities.power.qmp import QmpDriver
from tests.bmc import MemoryPower

ON = ("On", "ForceOn")
OFF = ("ForceOff", "GracefulShutdown")
RESTART = ("ForceRestart", "GracefulRestart", "PowerCycle")


class QmpSystems(AbstractSystemsDriver):
    """One System: a VM whose power is a `PowerDriver` (the QMP driver, or MemoryPower).
    Requests are served one at a time (QEMU's monitor takes one client at a time anyway)."""

    def __init__(self, power: Any, name: str, system_uuid: str) -> None:
        self.power, self._name, self._uuid = power, name, system_uuid
        self.boot_device = "Hdd"
        self.lock = threading.Lock()

    @property
    def driver(self) -> str:
        return f"<{self.power.name}>"

    @property
    def systems(self) -> list[str]:
        return [self._uuid]

    def _check(self, identity: str) -> None:
        if identity == self._name:
            raise error.AliasAccessError(self._uuid)  # the emulator redirects a name to the UUID
        if identity != self._uuid:
            raise error.NotFound(f"no system {identity}")

    def uuid(self, identity: str) -> str:
        self._check(identity)
        return self._uuid

    def name(self, identity: str) -> str:
        return self._name

    def get_power_state(self, identity: str) -> str:
        self._check(identity)
        return "On" if self._do(self.power.status) == "on" else "Off"

    def set_power_state(self, identity: str, state: str) -> None:
        self._check(identity)
        if state in ON:
            self._do(self.power.power_on)
        elif state in OFF:
            self._do(self.power.power_off)
        elif state in RESTART:
            self._do(self.power.cycle)
        else:
            raise error.BadRequest(f"reset type {state} is not supported")

    def get_boot_device(self, identity: str) -> str:
        return self.boot_device

    def set_boot_device(self, identity: str, boot_source: str) -> None:
        self._check(identity)
        if boot_source == "Pxe":
            self._do(self.power.pxe_once)
        self.boot_device = boot_source

    def _do(self, action: Any) -> Any:
        """The backend's failures as Redfish error answers with its words: a refusal is 409, no
        answer from QEMU 503."""
        with self.lock:
            try:
                return action()
            except BmcRefused as e:
                raise error.Conflict(str(e)) from None
            except PowerError as e:
                raise error.FishyError(str(e), code=503) from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--auth-file", required=True, help="htpasswd file (bcrypt) of the BMC's users")
    backend = parser.add_mutually_exclusive_group(required=True)
    backend.add_argument("--qmp", help="the VM's QMP socket")
    backend.add_argument("--memory", help="a MemoryPower machine writing its state to this file")
    backend.add_argument("--fake", action="store_true", help="sushy-tools' own fake driver")
    parser.add_argument("--state-dir", help="where the fake driver keeps its state (else a shared /tmp dir)")
    parser.add_argument("--name", default="vm")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve HTTPS with this certificate")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    app = emulator.app
    config: dict[str, Any] = {"SUSHY_EMULATOR_AUTH_FILE": args.auth_file}
    if args.fake:
        config |= {"SUSHY_EMULATOR_FAKE_DRIVER": True, "SUSHY_EMULATOR_STATE_DIR": args.state_dir}
    app.configure(extra_config=config)
    if not args.fake:
        power = QmpDriver(args.qmp) if args.qmp else MemoryPower(Path(args.memory))
        QmpSystems.initialize(app.config, app.logger)
        systems = QmpSystems(power, args.name, str(uuidlib.uuid4()))
        emulator.Application.systems = property(lambda _app: systems)  # type: ignore[assignment]
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=tuple(args.tls) if args.tls else None)
    print(f"listening {server.server_port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
