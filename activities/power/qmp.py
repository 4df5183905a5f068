"""QEMU's QMP as a machine's power button: the lab's VMs (address = the VM's QMP unix socket).

A VM's power is its vCPUs, not its QEMU process: a driver that only speaks QMP cannot start a
QEMU that is gone (`tempered lab power NAME on` does: it knows the VM's command line). So:

- status: `query-status` "running" is on; "paused" (our off), "shutdown" (the guest powered
  off; the lab runs QEMU with `-no-shutdown`, so QEMU waits) and anything else are off; no
  QEMU on the socket is off too, saying "QEMU is not running";
- off: `stop` (the vCPUs halt; QEMU stays, so `on` can start the machine again);
- on: `system_reset`, then `cont` once QEMU reports the reset: a fresh boot from the firmware
  (nothing when it runs already);
- cycle: `system_reset` (and `cont` when it was stopped): the firmware starts again;
- pxe-once: nothing: the lab's VMs boot the network first (bootindex=1 on their NIC), so every
  boot is a network boot already. The driver says so in `answer`.

`on` and `cycle` with no QEMU are refused (BmcRefused): start the VM first. A QEMU that does
not answer on its socket within the timeout is BmcUnreachable (another client holds the
monitor, or QEMU hangs): worth trying again.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from activities.domain.power import PowerState
from activities.power import BmcRefused, BmcUnreachable

QMP_TIMEOUT_S = 10.0  # QMP answers in milliseconds; a monitor another client holds answers when it lets go
RESET_WAIT_S = 10.0  # from system_reset to QEMU's RESET event (the main loop runs it at once)
NOT_RUNNING = "QEMU is not running"


class QmpError(RuntimeError):
    """QEMU answered a QMP command with an error; the message is QEMU's description."""


class Qmp:
    """The smallest QMP client: connect, negotiate capabilities, run commands one at a time.
    Asynchronous events that arrive in between are kept in `events` (so a caller can wait for
    RESET after system_reset)."""

    def __init__(self, path: Path | str, timeout: float = QMP_TIMEOUT_S) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.events: list[dict[str, Any]] = []
        try:
            self.sock.connect(str(path))
            self.reader = self.sock.makefile("rb")
            self._read()  # the greeting
            self.execute("qmp_capabilities")
        except BaseException:
            self.sock.close()
            raise

    def _read(self) -> dict[str, Any]:
        """The next reply, keeping the asynchronous events QEMU sends in between."""
        while True:
            line = self.reader.readline()
            if not line:
                raise ConnectionError("QMP socket closed")
            message = json.loads(line)
            if "event" not in message:
                return message
            self.events.append(message)

    def execute(self, command: str, **arguments: Any) -> Any:
        request = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        reply = self._read()
        if "error" in reply:
            raise QmpError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def wait_event(self, name: str, timeout: float) -> None:
        """Until QEMU sends the event `name` (or one already came); TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while not any(e.get("event") == name for e in self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {name} event from QEMU within {timeout:.0f} s")
            self.sock.settimeout(left)
            line = self.reader.readline()
            if not line:
                raise ConnectionError("QMP socket closed")
            message = json.loads(line)
            if "event" in message:
                self.events.append(message)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> "Qmp":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class QmpDriver:
    """A QEMU VM's power through its QMP socket (see the module's docstring for the semantics)."""

    name = "qmp"

    def __init__(self, socket_path: Path | str, timeout_s: float = QMP_TIMEOUT_S) -> None:
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s
        self.answer = ""  # what the last command did, in words, for the operator

    def __repr__(self) -> str:
        return f"QmpDriver({str(self.socket_path)!r})"

    def status(self) -> PowerState:
        state = self.qemu_status()
        self.answer = f"QEMU: {state}" if state is not None else NOT_RUNNING
        return "on" if state == "running" else "off"

    def power_off(self) -> None:
        with self._connected(required=False) as qmp:
            if qmp is None:
                self.answer = f"{NOT_RUNNING}: the machine is off"
            elif (state := qmp.execute("query-status")["status"]) != "running":
                self.answer = f"already off (QEMU: {state})"
            else:
                qmp.execute("stop")
                self.answer = "stopped (vCPUs halted; QEMU waits for on)"

    def power_on(self) -> None:
        with self._connected(required=True) as qmp:
            if qmp.execute("query-status")["status"] == "running":
                self.answer = "already on"
                return
            self._fresh_boot(qmp)
            self.answer = "reset and started: a fresh boot"

    def cycle(self) -> None:
        with self._connected(required=True) as qmp:
            if qmp.execute("query-status")["status"] == "running":
                qmp.execute("system_reset")
                self.answer = "reset"
            else:
                self._fresh_boot(qmp)
                self.answer = "was off: reset and started"

    def pxe_once(self) -> None:
        """Nothing to change: the lab's VMs boot the network first on every boot."""
        self.answer = "nothing to change: this VM boots from the network first on every boot"

    def qemu_status(self) -> str | None:
        """QMP's own run state ("running", "paused", "shutdown", ...), or None when no QEMU answers."""
        with self._connected(required=False) as qmp:
            return None if qmp is None else str(qmp.execute("query-status")["status"])

    def _fresh_boot(self, qmp: Qmp) -> None:
        """Reset a stopped VM, wait until QEMU did it (a VM the guest shut down refuses `cont`
        until then), and let its vCPUs run: the firmware starts from the beginning."""
        qmp.events.clear()
        qmp.execute("system_reset")
        try:
            qmp.wait_event("RESET", RESET_WAIT_S)
        except TimeoutError as e:
            raise BmcUnreachable(f"QEMU at {self.socket_path}: {e}") from None
        qmp.execute("cont")

    def _connected(self, required: bool) -> "_Session":
        return _Session(self, required)

    def not_running_message(self) -> str:
        """What `on` says with no QEMU: the lab keeps each VM's socket in a directory named after it."""
        return f"{NOT_RUNNING}: start the VM (tempered lab power {self.socket_path.parent.name} on)"


class _Session:
    """One QMP connection for one command, with QMP's failures turned into power errors:
    no QEMU (None, or BmcRefused when the command needs one), no answer (BmcUnreachable),
    an error answer (BmcRefused with QEMU's words)."""

    def __init__(self, driver: QmpDriver, required: bool) -> None:
        self.driver, self.required = driver, required
        self.qmp: Qmp | None = None

    def __enter__(self) -> Any:
        path = self.driver.socket_path
        try:
            self.qmp = Qmp(path, self.driver.timeout_s)
        except (FileNotFoundError, ConnectionRefusedError):
            if self.required:
                raise BmcRefused(self.driver.not_running_message()) from None
            return None
        except PermissionError:
            raise BmcRefused(f"cannot open QEMU's QMP socket {path}: permission denied") from None
        except (TimeoutError, socket.timeout):
            raise BmcUnreachable(f"QEMU at {path} did not answer within {self.driver.timeout_s:.0f} s") from None
        except (OSError, ConnectionError, ValueError) as e:
            raise BmcUnreachable(f"QEMU at {path}: {e}") from None
        return self.qmp

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> bool:
        if self.qmp is not None:
            self.qmp.close()
        path = self.driver.socket_path
        if isinstance(error, QmpError):
            raise BmcRefused(f"QEMU at {path}: {error}") from None
        if isinstance(error, (TimeoutError, socket.timeout)):
            raise BmcUnreachable(f"QEMU at {path} did not answer within {self.driver.timeout_s:.0f} s") from None
        if isinstance(error, (ConnectionError, OSError, ValueError)) and not isinstance(error, BmcRefused):
            raise BmcUnreachable(f"QEMU at {path}: {error}") from None
        return False
