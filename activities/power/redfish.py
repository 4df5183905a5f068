"""Redfish power through `sushy` (the library OpenStack Ironic drives BMCs with).

Each command opens its own connection (the service root, then a session or basic auth, as the
BMC offers), acts on the System (`system_id`, or the only one there is), waits until the
System reports the power state asked for, and closes the session: nothing stays logged in
between commands, and a changed password takes effect at the next one.

A Redfish power-on can take tens of seconds (the BMC answers the POST when the host has begun
to power, some only later), so the read timeout is long (60 s) and the wait for the state is
bounded (`settle_s`, 90 s); the connect timeout is short (5 s): a BMC that does not even accept
the connection is reported quickly. Errors, in the operator's words:

- no answer (connection refused or timed out, DNS) -> BmcUnreachable (retried);
- an HTTP error answer (401/403 wrong credentials, 400, 404, 5xx) -> BmcRefused with the
  BMC's own message; a TLS certificate the worker cannot verify -> BmcRefused (set
  `verify_tls: false` for a BMC with a self-signed certificate);
- a System that never reaches the state within `settle_s` -> BmcUnreachable (try again).

The password is held as a SecretStr and given to sushy only while a command runs; it is in no
message and no repr.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
import sushy
from pydantic import SecretStr
from sushy import auth as sushy_auth
from sushy import connector as sushy_connector
from sushy import exceptions as sushy_exc

from activities.domain.power import PowerState
from activities.power import BmcRefused, BmcUnreachable

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0  # a BMC may answer a power-on POST only after tens of seconds
SETTLE_S = 90.0  # from the accepted command to the System reporting the state
POLL_S = 1.0
RETRIES = 2  # sushy's own retries of a failed connection or a 5xx GET, 1 s apart


def _state(value: Any) -> PowerState:
    """sushy's PowerState (On, Off, PoweringOn, PoweringOff, or None) as ours."""
    if value == sushy.POWER_STATE_ON:
        return "on"
    if value == sushy.POWER_STATE_OFF:
        return "off"
    return "unknown"


class RedfishDriver:
    name = "redfish"

    def __init__(self, url: str, username: str, password: SecretStr, system_id: str = "",
                 verify_tls: bool = True, settle_s: float = SETTLE_S, poll_s: float = POLL_S) -> None:
        self.url = url if "://" in url else f"https://{url}"
        self.username = username
        self._password = password
        self.system_id = system_id
        self.verify_tls = verify_tls
        self.settle_s, self.poll_s = settle_s, poll_s
        self.answer = ""  # what the last command did, in words, for the operator

    def __repr__(self) -> str:
        return f"RedfishDriver(url={self.url!r}, username={self.username!r}, system_id={self.system_id!r})"

    def status(self) -> PowerState:
        with self._system() as system:
            state = _state(system.power_state)
            self.answer = f"Redfish {system.path}: PowerState {_text(system.power_state)}"
            return state

    def power_on(self) -> None:
        self._reset(sushy.RESET_ON, "on")

    def power_off(self) -> None:
        self._reset(sushy.RESET_FORCE_OFF, "off")

    def cycle(self) -> None:
        """ForceRestart when on (PowerCycle where the BMC offers no ForceRestart); On when off,
        as many BMCs refuse a restart of a System that is off."""
        with self._system() as system:
            if _state(system.power_state) == "off":
                self._act(system, sushy.RESET_ON, "on")
                return
            allowed = system.get_allowed_reset_system_values()
            if sushy.RESET_FORCE_RESTART in allowed or sushy.RESET_POWER_CYCLE not in allowed:
                self._act(system, sushy.RESET_FORCE_RESTART, "on")
            else:
                self._act(system, sushy.RESET_POWER_CYCLE, "on")

    def pxe_once(self) -> None:
        with self._system() as system:
            system.set_system_boot_options(sushy.BOOT_SOURCE_TARGET_PXE, enabled=sushy.BOOT_SOURCE_ENABLED_ONCE)
            self.answer = f"Redfish {system.path}: next boot from the network (Pxe, Once)"

    def _reset(self, reset: Any, want: PowerState) -> None:
        with self._system() as system:
            if _state(system.power_state) == want:
                self.answer = f"Redfish {system.path}: already {_text(system.power_state)}"
                return
            self._act(system, reset, want)

    def _act(self, system: Any, reset: Any, want: PowerState) -> None:
        """POST the reset, then wait until the System reports `want`."""
        system.reset_system(reset)
        started = time.monotonic()
        while True:
            system.refresh()
            if _state(system.power_state) == want:
                break
            if time.monotonic() - started > self.settle_s:
                raise BmcUnreachable(
                    f"Redfish {system.path}: {_text(reset)} accepted, but the System still reports "
                    f"{_text(system.power_state)} after {self.settle_s:.0f} s")
            time.sleep(self.poll_s)
        self.answer = f"Redfish {system.path}: {_text(reset)} done; PowerState {_text(system.power_state)}"

    @contextmanager
    def _system(self) -> Iterator[Any]:
        """The System, on a connection of its own, closed (its session deleted) afterwards."""
        connection = sushy_connector.Connector(
            self.url, verify=self.verify_tls, server_side_retries=RETRIES, server_side_retries_delay=1,
            default_request_timeout=READ_TIMEOUT_S, connect_timeout=CONNECT_TIMEOUT_S)
        auth = sushy_auth.SessionOrBasicAuth(username=self.username, password=self._password.get_secret_value())
        try:
            with _errors(self.url):
                root = sushy.Sushy(self.url, auth=auth, connector=connection)
                yield root.get_system(self.system_id or None)
        finally:
            _quietly(auth.close)  # deletes the session; a second close (sushy's __del__) does nothing
            connection.close()


def _text(value: Any) -> str:
    return str(getattr(value, "value", value))


def _quietly(close: Callable[[], object]) -> None:
    """Closing after a failure must not hide the failure."""
    try:
        close()
    except Exception:  # noqa: BLE001 - a session that cannot be deleted expires on the BMC
        pass


@contextmanager
def _errors(url: str) -> Iterator[None]:
    """sushy's exceptions as the operator's answer: unreachable (retry) or refused (do not)."""
    try:
        yield
    except sushy_exc.ConnectionError as e:
        if isinstance(e.__context__, requests.exceptions.SSLError):
            raise BmcRefused(f"Redfish {url}: TLS failed ({_cause(e)}); for a self-signed BMC "
                             "certificate set verify_tls false") from None
        raise BmcUnreachable(f"no answer from the Redfish BMC at {url}: {_cause(e)}") from None
    except sushy_exc.AccessError as e:
        raise BmcRefused(f"Redfish {url} refused the credentials (HTTP {e.status_code}): {e.detail or 'no details'}") from None
    except sushy_exc.HTTPError as e:
        raise BmcRefused(f"Redfish {url} answered HTTP {e.status_code}: {e.detail or 'no details'}") from None
    except sushy_exc.SushyError as e:
        raise BmcRefused(f"Redfish {url}: {e}") from None


def _cause(error: sushy_exc.ConnectionError) -> str:
    """The underlying requests error in a few words (its type), not urllib3's long repr."""
    cause = error.__context__
    if isinstance(cause, requests.exceptions.ConnectTimeout):
        return f"no connection within {CONNECT_TIMEOUT_S:.0f} s"
    if isinstance(cause, requests.exceptions.ReadTimeout):
        return f"no answer within {READ_TIMEOUT_S:.0f} s"
    if isinstance(cause, requests.exceptions.SSLError):
        return "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in str(cause) else type(cause).__name__
    if isinstance(cause, requests.exceptions.ConnectionError):
        return "connection refused" if "refused" in str(cause).lower() else "cannot connect"
    return type(cause).__name__ if cause is not None else "no answer"
