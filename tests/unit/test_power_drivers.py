"""The power drivers against real BMC software, no QEMU: the Redfish driver against sushy-tools'
emulator (its own fake driver, whose actions take 1-11 s like a real BMC's), the IPMI driver
against a BMC built on pyghmi's server class with an in-memory machine; the errors each gives
(wrong credentials, nothing listening, a BMC that says no); the QMP driver with no QEMU; the
manual driver; `driver_for`; and the password in no message and no repr."""

from __future__ import annotations

import base64
import logging
import socket
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from activities.domain.power import MANUAL_CYCLE, PowerSettings
from activities.power import BmcRefused, BmcUnreachable, PowerError
from activities.power.drivers import driver_for
from activities.power.ipmi import LOGIN_S, IpmiDriver, split_address
from activities.power.manual import ManualDriver
from activities.power.qmp import QmpDriver
from activities.power.redfish import RedfishDriver
from tests.bmc import read_memory
from tests.bmc.fixtures import USER, ipmi_bmc, redfish_bmc  # noqa: F401  (fixtures used by name)
from tests.servers import free_port

PASSWORD = "s3cret-Bmc-passw0rd"


def _refused(action, *words: str, secret: str = PASSWORD) -> str:
    """Run `action`, expect BmcRefused naming `words`, never the password."""
    with pytest.raises(BmcRefused) as refused:
        action()
    message = str(refused.value)
    assert all(word in message for word in words), message
    assert secret not in message and secret not in repr(refused.value)
    return message


def _not_logged(caplog: pytest.LogCaptureFixture, password: str) -> None:
    """Nothing the libraries logged (at DEBUG) holds the password, plain or in a Basic header."""
    basic = base64.b64encode(f"{USER}:{password}".encode()).decode()
    assert caplog.records and password not in caplog.text and basic not in caplog.text


def _system(bmc, path: str = "") -> dict:
    """The emulator's System as a client other than sushy reads it (what the BMC holds)."""
    with httpx.Client(base_url=bmc.address, auth=(USER, bmc.password)) as http:
        path = path or http.get("/redfish/v1/Systems").raise_for_status().json()["Members"][0]["@odata.id"]
        return http.get(path).raise_for_status().json()


def test_the_redfish_driver_powers_a_system_of_sushy_tools(redfish_bmc, caplog):
    caplog.set_level(logging.DEBUG)
    bmc = redfish_bmc(fake=True)
    driver = driver_for(bmc.settings())
    assert isinstance(driver, RedfishDriver) and driver.status() == "off"

    driver.power_on()  # the fake applies it 1-11 s later: the driver waits for the state
    assert "On done; PowerState On" in driver.answer
    assert driver.status() == "on" and _system(bmc)["PowerState"] == "On"

    driver.cycle()
    assert "ForceRestart done; PowerState On" in driver.answer
    assert 'power state set to "ForceRestart"' in bmc.log_text() and driver.status() == "on"

    driver.pxe_once()
    assert _system(bmc)["Boot"]["BootSourceOverrideTarget"] == "Pxe"

    driver.power_off()
    assert 'power state set to "ForceOff"' in bmc.log_text()
    assert driver.status() == "off" and _system(bmc)["PowerState"] == "Off"
    driver.power_off()  # already off: nothing sent
    assert "already Off" in driver.answer
    assert bmc.log_text().count('power state set to "ForceOff"') == 1
    _not_logged(caplog, bmc.password)


def test_wrong_redfish_credentials_are_refused_with_the_bmcs_words(redfish_bmc, caplog):
    caplog.set_level(logging.DEBUG)
    bmc = redfish_bmc(fake=True)
    _refused(driver_for(bmc.settings(password=PASSWORD)).status, "HTTP 401", "Incorrect username or password")
    _refused(driver_for(bmc.settings(username="nobody")).power_on, "HTTP 401", secret=bmc.password)
    assert 'power state set' not in bmc.log_text()
    _not_logged(caplog, PASSWORD)


def test_a_redfish_bmc_that_says_no_is_refused_with_its_message(redfish_bmc, tmp_path: Path):
    """Our emulator's System is a VM whose QEMU is not running: the BMC answers 409 with why."""
    bmc = redfish_bmc(qmp=tmp_path / "lab-9" / "qmp.sock")
    driver = driver_for(bmc.settings())
    assert driver.status() == "off"
    _refused(driver.power_on, "HTTP 409", "QEMU is not running: start the VM (tempered lab power lab-9 on)",
             secret=bmc.password)
    missing = bmc.settings().model_copy(update={"system_id": "/redfish/v1/Systems/nope"})
    _refused(driver_for(missing).status, "HTTP 404", "no system nope", secret=bmc.password)


def test_a_redfish_bmc_whose_certificate_cannot_be_verified_is_refused(redfish_bmc, tmp_path: Path):
    bmc = redfish_bmc(memory=tmp_path / "machine.json", tls=True)
    assert bmc.address.startswith("https://")
    _refused(driver_for(bmc.settings()).status, "TLS failed (certificate verify failed)", "set verify_tls false",
             secret=bmc.password)
    unverified = driver_for(bmc.settings().model_copy(update={"verify_tls": False}))
    assert unverified.status() == "off"
    unverified.power_on()
    assert read_memory(tmp_path / "machine.json")["power"] == "on" and unverified.status() == "on"


def test_a_redfish_bmc_with_nothing_listening_is_unreachable():
    settings = PowerSettings(driver="redfish", address=f"http://127.0.0.1:{free_port()}", username=USER,
                             password=SecretStr(PASSWORD))
    with pytest.raises(BmcUnreachable, match="no answer from the Redfish BMC at http://127.0.0.1:.*: connection refused"):
        driver_for(settings).status()


def test_the_ipmi_driver_powers_a_pyghmi_bmc(ipmi_bmc, tmp_path: Path, caplog):
    caplog.set_level(logging.DEBUG)
    machine = tmp_path / "machine.json"
    bmc = ipmi_bmc(memory=machine)
    driver = driver_for(bmc.settings())
    assert isinstance(driver, IpmiDriver) and driver.status() == "off"

    driver.power_on()
    assert read_memory(machine) == {"power": "on", "boots": 1, "next_boot": "default"}
    assert driver.status() == "on"
    driver.power_on()  # already on: no second boot
    assert read_memory(machine)["boots"] == 1

    driver.cycle()  # a hard reset: the power stays on, the machine boots again
    assert read_memory(machine) == {"power": "on", "boots": 2, "next_boot": "default"}

    driver.pxe_once()
    assert read_memory(machine)["next_boot"] == "network"

    driver.power_off()
    assert driver.status() == "off" and read_memory(machine)["power"] == "off"
    driver.cycle()  # off: a cycle powers it on (and the one-time network boot is used up)
    assert read_memory(machine) == {"power": "on", "boots": 3, "next_boot": "default"}
    assert bmc.password not in caplog.text


def test_wrong_ipmi_credentials_are_refused(ipmi_bmc, tmp_path: Path):
    bmc = ipmi_bmc(memory=tmp_path / "machine.json")
    _refused(driver_for(bmc.settings(password=PASSWORD)).power_on, "refused the login", "Incorrect password")
    _refused(driver_for(bmc.settings(username="nobody")).status, "refused the login of 'nobody'",
             "Unauthorized name", secret=bmc.password)
    assert read_memory(tmp_path / "machine.json")["boots"] == 0
    assert driver_for(bmc.settings()).status() == "off"  # the right ones still work after the failures


def test_an_ipmi_bmc_that_says_no_is_refused_with_its_completion_code(ipmi_bmc, tmp_path: Path):
    bmc = ipmi_bmc(qmp=tmp_path / "lab-9" / "qmp.sock")  # a VM whose QEMU is not running
    driver = driver_for(bmc.settings())
    assert driver.status() == "off"
    _refused(driver.power_on, "Command not supported in present state", secret=bmc.password)
    assert "QEMU is not running" in bmc.log_text()  # the BMC's own log says why


@pytest.mark.timeout(3 * LOGIN_S)
def test_an_ipmi_bmc_with_nothing_listening_is_unreachable():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # a port of ours that never answers
        udp.bind(("127.0.0.1", 0))
        driver = driver_for(PowerSettings(driver="ipmi", address=f"127.0.0.1:{udp.getsockname()[1]}",
                                          username=USER, password=SecretStr(PASSWORD)))
        with pytest.raises(BmcUnreachable, match="no answer from the IPMI BMC at 127.0.0.1:") as unreachable:
            driver.status()
    assert PASSWORD not in str(unreachable.value)


def test_ipmi_addresses():
    assert split_address("10.0.9.22") == ("10.0.9.22", 623)
    assert split_address("bmc-7.rack-a:6230") == ("bmc-7.rack-a", 6230)
    assert split_address("[fd00::5]:624") == ("fd00::5", 624)
    assert split_address("fd00::5") == ("fd00::5", 623)
    _refused(lambda: split_address("bmc:six"), "the port must be a number")
    _refused(lambda: split_address("[]:623"), "names no host")


def test_the_qmp_driver_with_no_qemu(tmp_path: Path):
    """No QEMU: off, saying so; on and cycle refused, naming the lab command that starts it; off
    and pxe-once change nothing. A socket file nobody listens on (QEMU died) is the same."""
    stale = tmp_path / "lab-3" / "qmp.sock"
    stale.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as left:
        left.bind(str(stale))
    for path in (tmp_path / "lab-3" / "gone.sock", stale):
        driver = driver_for(PowerSettings(driver="qmp", address=str(path)))
        assert isinstance(driver, QmpDriver) and driver.status() == "off"
        assert driver.answer == "QEMU is not running"
        _refused(driver.power_on, "QEMU is not running: start the VM (tempered lab power lab-3 on)")
        _refused(driver.cycle, "QEMU is not running")
        driver.power_off()
        assert "the machine is off" in driver.answer
        driver.pxe_once()
        assert "boots from the network first" in driver.answer


def test_the_manual_driver_asks_a_person():
    driver = driver_for(PowerSettings())
    assert isinstance(driver, ManualDriver) and driver.status() == "unknown"
    assert _refused(driver.cycle, "manual power") == f"manual power: {MANUAL_CYCLE}"
    _refused(driver.power_on, "manual power: power on this machine now")
    _refused(driver.power_off, "manual power: power off this machine now")
    _refused(driver.pxe_once, "manual power:", "network boot")


def test_driver_for_picks_each_driver_and_names_what_is_missing():
    secret = SecretStr(PASSWORD)
    redfish = driver_for(PowerSettings(driver="redfish", address="10.0.9.21", username="admin", password=secret,
                                       system_id="/redfish/v1/Systems/1", verify_tls=False))
    assert isinstance(redfish, RedfishDriver) and redfish.url == "https://10.0.9.21" and not redfish.verify_tls
    ipmi = driver_for(PowerSettings(driver="ipmi", address="10.0.9.22:6230", username="ADMIN", password=secret))
    assert isinstance(ipmi, IpmiDriver) and (ipmi.host, ipmi.port) == ("10.0.9.22", 6230)
    assert isinstance(driver_for(PowerSettings(driver="qmp", address="/tmp/x.sock")), QmpDriver)
    assert isinstance(driver_for(PowerSettings(driver="manual")), ManualDriver)
    assert {d.name for d in (redfish, ipmi)} == {"redfish", "ipmi"}
    _refused(lambda: driver_for(PowerSettings(driver="redfish", username="admin")), "redfish power needs an address")
    _refused(lambda: driver_for(PowerSettings(driver="qmp", address="  ")), "QMP socket path")
    _refused(lambda: driver_for(PowerSettings(driver="redfish", address=f"https://admin:{PASSWORD}@10.0.9.21",
                                              username="admin")), "in their own fields, not in the URL")
    _refused(lambda: driver_for(PowerSettings(driver="ipmi", address="10.0.9.22", password=secret)),
             "ipmi power needs the BMC's user name")


def test_the_password_is_in_no_repr_and_no_error():
    secret = SecretStr(PASSWORD)
    drivers = [
        driver_for(PowerSettings(driver="redfish", address=f"http://127.0.0.1:{free_port()}", username="admin",
                                 password=secret)),
        driver_for(PowerSettings(driver="ipmi", address="127.0.0.1:1", username="admin", password=secret)),
    ]
    for driver in drivers:
        assert PASSWORD not in repr(driver) and PASSWORD not in str(vars(driver)) and PASSWORD not in repr(vars(driver))
    with pytest.raises(PowerError) as failed:
        drivers[0].power_on()
    assert PASSWORD not in str(failed.value) and PASSWORD not in repr(failed.value)
