"""An IPMI BMC built on pyghmi's server class, its chassis a QEMU VM's QMP socket (or a
MemoryPower machine), on 127.0.0.1 at a free UDP port.

    BMC_USER=admin BMC_PASSWORD=... python -m tests.bmc.ipmi_qmp (--qmp SOCKET | --memory FILE)

It prints `listening PORT` once it serves. The credentials come from the environment, not the
command line (which every user of the host can read). Chassis control power up / down / hard
reset / cycle press the VM's buttons through Tempered's own QMP driver; "set boot device
network" is the driver's pxe-once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pyghmi.ipmi import bmc
from pyghmi.ipmi.private import serversession

from activities.power import BmcRefused, PowerError
from activities.power.qmp import QmpDriver
from tests.bmc import MemoryPower

NOT_IN_PRESENT_STATE = 0xD5  # IPMI completion code: cannot execute the command in the present state
UNSPECIFIED = 0xFF
SHA1 = 1  # RAKP-HMAC-SHA1, the only authentication algorithm pyghmi's server speaks (cipher suite 3)
NO_CIPHER_SUITE_MATCH = 0x11  # RMCP+ status codes
UNAUTHORIZED_NAME = 0x0D


class Suite3Session(serversession.ServerSession):
    """pyghmi's server session, refusing what it cannot do, as a real BMC does:
    - pyghmi's server speaks cipher suite 3 (SHA-1) only, yet answers a SHA-256 proposal with
      success and then SHA-1 hashes; pyghmi's own client proposes SHA-256 first and falls back to
      SHA-1 only when refused;
    - pyghmi's server ignores an unknown user's RAKP 1; a BMC answers "unauthorized name"."""

    def create_open_session_response(self, request: bytearray) -> bytearray:
        if request[12] != SHA1:  # the authentication payload's algorithm (tag, priv, 2, session id, 4 + 4)
            return bytearray([request[0], NO_CIPHER_SUITE_MATCH, 0, 0]) + request[4:8]
        return super().create_open_session_response(request)

    def _got_rakp1(self, data: bytearray) -> None:
        name = bytes(data[28:]).decode("utf-8", "replace")
        if data[27] and name not in self.authdata:  # data[27]: the name's length
            refusal = bytearray([data[0], UNAUTHORIZED_NAME, 0, 0]) + self.clientsessionid
            self.send_payload(refusal, serversession.constants.payload_types["rakp2"], retry=False)
            return
        super()._got_rakp1(data)


serversession.ServerSession = Suite3Session  # type: ignore[misc]  # IpmiServer makes its sessions by this name


class QmpBmc(bmc.Bmc):
    """pyghmi's BMC with a `PowerDriver` behind its chassis commands."""

    def __init__(self, power: Any, authdata: dict[str, str], address: str = "127.0.0.1") -> None:
        super().__init__(authdata, port=0, address=address)
        # pyghmi routes a session's packets by the port it was told; the kernel chose it
        self.port = self.serversocket.getsockname()[1]
        self.power = power
        self.boot_device = "default"

    def get_power_state(self) -> str:
        return "on" if self.power.status() == "on" else "off"

    def power_on(self) -> int:
        return self._do(self.power.power_on)

    def power_off(self) -> int:
        return self._do(self.power.power_off)

    def power_shutdown(self) -> int:  # soft off: a VM's firmware has no OS to ask, so it is off
        return self._do(self.power.power_off)

    def power_reset(self) -> int:
        return self._do(self.power.cycle)

    def power_cycle(self) -> int:
        return self._do(self.power.cycle)

    def get_boot_device(self) -> str:
        return self.boot_device

    def set_boot_device(self, bootdevice: str) -> None:
        if bootdevice == "network":
            self.power.pxe_once()
        self.boot_device = bootdevice

    @staticmethod
    def _do(action: Any) -> int:
        """The backend's outcome as an IPMI completion code (IPMI answers carry no text)."""
        try:
            action()
        except BmcRefused as e:
            print(f"refused: {e}", file=sys.stderr, flush=True)
            return NOT_IN_PRESENT_STATE
        except PowerError as e:
            print(f"failed: {e}", file=sys.stderr, flush=True)
            return UNSPECIFIED
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    backend = parser.add_mutually_exclusive_group(required=True)
    backend.add_argument("--qmp", help="the VM's QMP socket")
    backend.add_argument("--memory", help="a MemoryPower machine writing its state to this file")
    args = parser.parse_args()
    power = QmpDriver(args.qmp) if args.qmp else MemoryPower(Path(args.memory))
    server = QmpBmc(power, {os.environ["BMC_USER"]: os.environ["BMC_PASSWORD"]})
    print(f"listening {server.port}", flush=True)
    server.listen(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
