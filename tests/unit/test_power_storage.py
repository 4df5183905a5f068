"""A machine's power settings at rest (activities/storage/power.py): the password sealed, never
in a view; manual when nothing is stored; discovery never over an operator."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr

from activities.domain.power import PowerSettings
from activities.storage import settings as settings_mod
from activities.storage.power import forget_power, load_power, power_view, record_discovered_address, save_power

PASSWORD = "hunter2-bmc-Secret!"


@pytest.fixture
def settings(tmp_path: Path) -> settings_mod.Settings:
    return replace(settings_mod.load(), home=tmp_path, database_url=f"sqlite:///{tmp_path / 'tempered.db'}")


def redfish(**extra) -> PowerSettings:
    return PowerSettings(driver="redfish", address="https://10.0.9.21", username="admin",
                         password=SecretStr(PASSWORD), site="rack-a", verify_tls=False, **extra)


def test_a_machine_without_settings_has_manual_power(settings):
    assert load_power(settings, "m-1") == PowerSettings()
    view = power_view(settings, "m-1")
    assert (view.driver, view.source, view.has_password) == ("manual", "default", False)
    assert forget_power(settings, "m-1") is False


def test_the_password_is_sealed_at_rest_and_never_in_a_view(settings):
    view = save_power(settings, "m-1", redfish())
    assert (view.driver, view.address, view.has_password, view.site, view.source) == (
        "redfish", "https://10.0.9.21", True, "rack-a", "operator")
    assert PASSWORD not in view.model_dump_json()
    loaded = load_power(settings, "m-1")
    assert loaded.password.get_secret_value() == PASSWORD and loaded.site == "rack-a" and not loaded.verify_tls
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as raw:
        [(column,)] = raw.execute("SELECT sealed_password FROM powerconfig WHERE machine_id = 'm-1'").fetchall()
        dump = "\n".join(raw.iterdump())
    assert column and PASSWORD not in column and PASSWORD not in dump


def test_a_save_without_password_keeps_the_stored_one_while_the_bmc_stays(settings):
    save_power(settings, "m-1", redfish())
    save_power(settings, "m-1", redfish(system_id="/redfish/v1/Systems/2").model_copy(update={"password": SecretStr("")}))
    assert load_power(settings, "m-1").password.get_secret_value() == PASSWORD
    moved = redfish().model_copy(update={"password": SecretStr(""), "address": "https://10.0.9.99"})
    assert save_power(settings, "m-1", moved).has_password is False  # another BMC: the old password is not its


def test_clear_goes_back_to_manual(settings):
    save_power(settings, "m-1", redfish())
    assert forget_power(settings, "m-1") is True
    assert load_power(settings, "m-1") == PowerSettings() and power_view(settings, "m-1").source == "default"


def test_a_discovered_address_never_replaces_an_operators_settings(settings):
    assert record_discovered_address(settings, "m-2", "ipmi", "10.0.9.22") is True
    view = power_view(settings, "m-2")
    assert (view.driver, view.address, view.source, view.has_password) == ("ipmi", "10.0.9.22", "discovery", False)
    save_power(settings, "m-2", redfish())
    assert record_discovered_address(settings, "m-2", "ipmi", "10.0.9.99") is False
    assert power_view(settings, "m-2").address == "https://10.0.9.21"


@pytest.mark.parametrize("value, sites", [("", ()), ("rack-a", ("rack-a",)), (" rack-a, rack-b ,rack-a", ("rack-a", "rack-b"))])
def test_worker_sites_are_a_comma_list(monkeypatch, value, sites):
    monkeypatch.setenv("TEMPERED_WORKER_SITES", value)
    assert settings_mod.load().worker_sites == sites


def test_a_bad_site_name_is_a_settings_error_naming_it(monkeypatch):
    monkeypatch.setenv("TEMPERED_WORKER_SITES", "rack-a,Rack_B")
    with pytest.raises(ValueError, match="TEMPERED_WORKER_SITES: 'Rack_B' is not a site name"):
        settings_mod.load()


def test_a_discovered_bmc_without_credentials_is_a_manual_target_naming_them(settings):
    """An address discovery reported is no BMC a command can use yet: the target is manual (a
    machine's power step asks a person), and its reason says which credentials to set."""
    from temporalio.testing import ActivityEnvironment

    from activities.power.activity import PowerActivities

    record_discovered_address(settings, "m-3", "ipmi", "10.0.9.22")
    power = PowerActivities(settings)
    target = asyncio.run(ActivityEnvironment().run(power.power_target, "m-3"))
    assert (target.driver, target.manual, target.site) == ("manual", True, None)
    assert target.reason == ("machine m-3's ipmi BMC at 10.0.9.22 has no credentials: set them with "
                             "'tempered machine power m-3 set --driver ipmi --address 10.0.9.22 --username USER "
                             "--password-stdin'")
    save_power(settings, "m-3", redfish().model_copy(update={"site": None}))
    target = asyncio.run(ActivityEnvironment().run(power.power_target, "m-3"))
    assert (target.driver, target.manual, target.reason) == ("redfish", False, "")
