"""The custom search attributes that let the Temporal Web UI list machines by state or cluster."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

STATE = SearchAttributeKey.for_keyword("TemperedState")
CLUSTER = SearchAttributeKey.for_keyword("TemperedCluster")
ROLE = SearchAttributeKey.for_keyword("TemperedRole")
MAC = SearchAttributeKey.for_keyword("TemperedMac")

ALL = (STATE, CLUSTER, ROLE, MAC)


def updates(**values: str | None) -> list:
    """Search-attribute updates for the given keys; empty values are unset, not stored as ''."""
    keys = {"state": STATE, "cluster": CLUSTER, "role": ROLE, "mac": MAC}
    return [
        keys[name].value_set(value) if value else keys[name].value_unset()
        for name, value in values.items()
    ]
