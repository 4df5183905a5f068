"""The custom search attributes that let the Temporal Web UI list machines by state or cluster."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributeUpdate, TypedSearchAttributes

STATE = SearchAttributeKey.for_keyword("TemperedState")
CLUSTER = SearchAttributeKey.for_keyword("TemperedCluster")
ROLE = SearchAttributeKey.for_keyword("TemperedRole")
MAC = SearchAttributeKey.for_keyword("TemperedMac")

ALL = (STATE, CLUSTER, ROLE, MAC)


def updates(**values: str | None) -> list[SearchAttributeUpdate]:
    """Search-attribute updates for the given keys; empty values are unset, not stored as ''."""
    keys = {"state": STATE, "cluster": CLUSTER, "role": ROLE, "mac": MAC}
    return [
        keys[name].value_set(value) if value else keys[name].value_unset()
        for name, value in values.items()
    ]


def changed(wanted: list[SearchAttributeUpdate], current: TypedSearchAttributes) -> list[SearchAttributeUpdate]:
    """The updates that change something: each upsert is a billed Temporal action, so an
    attribute already holding its value (or already unset) is left out."""
    return [update for update in wanted if current.get(update.key) != update.value]
