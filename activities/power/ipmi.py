"""IPMI power through `pyghmi` (IPMI 2.0 over LAN, RMCP+; the library xCAT and Confluent use).

address is host[:port] (port 623 by default; an IPv6 address in brackets: `[fd00::5]:623`).
Each command logs in, acts, and logs out: no session stays open between commands.

- on / off: chassis control power up / power down (hard: no OS shutdown), then waits until the
  chassis reports the state (pyghmi polls, about once a second, for at most `settle_s`);
- cycle: chassis control hard reset when on, power up when off (a reset of a machine that is
  off does nothing on many BMCs);
- pxe-once: the boot device "network" for the next boot only (persist off);
- status: chassis status, on or off.

Errors, in the operator's words: a wrong user or password -> BmcRefused (the BMC refused the
RAKP exchange); no answer within pyghmi's retries (about 5 s; UDP, so a closed port and a
missing host look alike), or a login unfinished after LOGIN_S -> BmcUnreachable; an IPMI error
completion code -> BmcRefused with pyghmi's text. The password is held as a SecretStr and given to pyghmi only while a command
runs; it is in no message and no repr.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr
from pyghmi import exceptions as ipmi_exc
from pyghmi.ipmi import command as ipmi_command
from pyghmi.ipmi.private import session as ipmi_session

from activities.domain.power import PowerState
from activities.power import BmcRefused, BmcUnreachable

DEFAULT_PORT = 623
SETTLE_S = 60  # pyghmi polls the chassis about once a second after on/off
LOGIN_S = 20.0  # pyghmi gives up on a silent BMC after about 5 s; a BMC that answers, then stops, gets this long
# pyghmi's words when the BMC answered the login with a no (the rest of its login failures are silence)
REFUSED_LOGIN = ("password", "unauthorized", "privilege", "invalid role", "rakp")
# pyghmi keeps one session per (host, user, password, port) in process-wide tables: commands to
# the same BMC from two threads at once would share it half-logged-out, so they take turns
_LOCKS: dict[tuple[str, int], threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def _bmc_lock(host: str, port: int) -> threading.Lock:
    with _LOCKS_LOCK:
        return _LOCKS.setdefault((host, port), threading.Lock())


def split_address(address: str) -> tuple[str, int]:
    """host[:port] (IPv6 in brackets) -> (host, port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:  # a host name, an IPv4 address, or a bare IPv6 address
        host, port = address, ""
    if not host:
        raise BmcRefused(f"IPMI address {address!r} names no host")
    try:
        return host, int(port) if port else DEFAULT_PORT
    except ValueError:
        raise BmcRefused(f"IPMI address {address!r}: the port must be a number") from None


class IpmiDriver:
    name = "ipmi"

    def __init__(self, address: str, username: str, password: SecretStr, settle_s: int = SETTLE_S) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.username = username
        self._password = password
        self.settle_s = settle_s
        self.answer = ""  # what the last command did, in words, for the operator

    def __repr__(self) -> str:
        return f"IpmiDriver(address={self.address!r}, username={self.username!r})"

    def status(self) -> PowerState:
        with self._command() as ipmi:
            state = ipmi.get_power()["powerstate"]
        self.answer = f"IPMI {self.address}: chassis power {state}"
        return "on" if state == "on" else "off" if state == "off" else "unknown"

    def power_on(self) -> None:
        self._set("on")

    def power_off(self) -> None:
        self._set("off")

    def cycle(self) -> None:
        with self._command() as ipmi:
            if ipmi.get_power()["powerstate"] == "off":
                ipmi.set_power("on", wait=self.settle_s)
                self.answer = f"IPMI {self.address}: was off, powered on"
            else:
                ipmi.set_power("reset")
                self.answer = f"IPMI {self.address}: hard reset"

    def pxe_once(self) -> None:
        with self._command() as ipmi:
            answer = ipmi.set_bootdev("network", persist=False)
        if isinstance(answer, dict) and "error" in answer:
            raise BmcRefused(f"IPMI {self.address}: {answer['error']}")
        self.answer = f"IPMI {self.address}: next boot from the network (once)"

    def _set(self, state: str) -> None:
        with self._command() as ipmi:
            done = ipmi.set_power(state, wait=self.settle_s)
        self.answer = f"IPMI {self.address}: chassis power {done.get('powerstate', state)}"

    @contextmanager
    def _command(self) -> Iterator[Any]:
        """A logged-in pyghmi Command for one power command, logged out afterwards."""
        with _bmc_lock(self.host, self.port):
            try:
                ipmi = self._login()
            except BaseException:
                self._forget_session()
                raise
            try:
                yield ipmi
            except ipmi_exc.IpmiException as e:
                raise self._command_error(e) from None
            finally:
                _logout(ipmi)
                self._forget_session()

    def _login(self) -> Any:
        """Log in, within LOGIN_S. pyghmi's own synchronous login has no overall bound: a BMC that
        ignores the RAKP exchange (as some do for an unknown user) keeps it logging in again
        forever. So: pyghmi's asynchronous login, driven here until it answers or time is up."""
        outcome: dict[str, Any] = {}
        try:
            ipmi = ipmi_command.Command(
                bmc=self.host, userid=self.username, password=self._password.get_secret_value(), port=self.port,
                onlogon=lambda response, _command: outcome.update(response or {"error": ""}))
        except ipmi_exc.IpmiException as e:
            raise self._login_error(str(e.args[0]) if e.args and e.args[0] else "") from None
        except OSError as e:  # a host name that does not resolve, no route
            raise BmcUnreachable(f"IPMI {self.address}: {e.strerror or e}") from None
        deadline = time.monotonic() + LOGIN_S
        while not outcome:
            if time.monotonic() > deadline:
                ipmi.ipmi_session._mark_broken("login timed out")  # stop its retries for good
                raise BmcUnreachable(f"no answer from the IPMI BMC at {self.address} within {LOGIN_S:.0f} s")
            ipmi_session.Session.wait_for_rsp(timeout=0.5)
        if "error" in outcome:
            raise self._login_error(str(outcome["error"] or ""))
        return ipmi

    def _login_error(self, said: str) -> Exception:
        if said and any(word in said.lower() for word in REFUSED_LOGIN):
            return BmcRefused(f"IPMI {self.address} refused the login of {self.username!r}: {said}")
        return BmcUnreachable(f"no answer from the IPMI BMC at {self.address}" + (f" ({said})" if said else ""))

    def _command_error(self, error: ipmi_exc.IpmiException) -> Exception:
        said = str(error.args[0]) if error.args and error.args[0] else "no details"
        if "no longer connected" in said.lower() or "timeout" in said.lower():
            return BmcUnreachable(f"IPMI {self.address} stopped answering: {said}")
        return BmcRefused(f"IPMI {self.address}: {said}")

    def _forget_session(self) -> None:
        """Drop pyghmi's cached session for this BMC, so the next command logs in afresh.
        pyghmi (1.6) files a session under its (host, user, password, port, kg) with str values
        and removes it under the bytes it encoded them to, so the entry stays: the next Command
        to the same BMC would get the session logged out (or broken, after an outage) for good."""
        key = (self.host, self.username, self._password.get_secret_value(), self.port, None)
        ipmi_session.Session.initting_sessions.pop(key, None)


def _logout(ipmi: Any) -> None:
    """Close the session (a BMC has few session slots); a BMC that went away needs no logout."""
    try:
        ipmi.ipmi_session.logout()
    except Exception:  # noqa: BLE001 - the command's own outcome is what matters
        pass
