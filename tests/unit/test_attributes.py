"""Attribute semantics, one rule of the README's attribute table at a time."""

from __future__ import annotations

import pytest

from activities.domain.attributes import apply
from activities.domain.rules import Attributes, Rule, RuleAttribute


def rule(*attributes: tuple[str, str]) -> Rule:
    return Rule(name="r", expression="true", attributes=[RuleAttribute(type=t, value=v) for t, v in attributes])


JOINED = Attributes(role="master", labels=["zone=a"], taints=["gpu=true:NoSchedule"], includes=["old"], variables={"x": "1"}, kargs=["quiet"])


def test_role_overwrites_while_new_and_is_kept_after():
    rules = [rule(("role", "worker")), rule(("role", "master"))]
    assert apply(rules, is_new=True, current=Attributes()).role == "master"
    assert apply(rules, is_new=False, current=JOINED).role == "master" == JOINED.role
    assert apply([rule(("role", "worker"))], is_new=False, current=JOINED).role == "master"


def test_labels_and_taints_append_only_while_new():
    rules = [rule(("label", "a=1"), ("taint", "t=1:NoSchedule")), rule(("label", "b=2"))]
    new = apply(rules, is_new=True, current=JOINED)
    assert (new.labels, new.taints) == (["a=1", "b=2"], ["t=1:NoSchedule"])
    rebooted = apply(rules, is_new=False, current=JOINED)
    assert (rebooted.labels, rebooted.taints) == (JOINED.labels, JOINED.taints)


def test_includes_and_kargs_append_on_every_boot_from_scratch():
    rules = [rule(("include", "debug"), ("karg", "console=ttyS0")), rule(("include", "gpu"))]
    for is_new in (True, False):
        result = apply(rules, is_new=is_new, current=JOINED)
        assert (result.includes, result.kargs) == (["debug", "gpu"], ["console=ttyS0"])


def test_variables_overwrite_per_name_on_every_boot():
    rules = [rule(("variable", "a=1"), ("variable", "b=2")), rule(("variable", "a=3"), ("variable", "c=x=y"))]
    for is_new in (True, False):
        assert apply(rules, is_new=is_new, current=JOINED).variables == {"a": "3", "b": "2", "c": "x=y"}


@pytest.mark.parametrize(
    "attribute, fragment",
    [(("variable", "novalue"), "name=value"), (("variable", "1x=2"), "name=value"),
     (("role", "king"), "master-prime"), (("colour", "blue"), "role"), (("label", ""), "at least 1")],
)
def test_bad_attributes_are_refused_when_saved(attribute, fragment):
    with pytest.raises(ValueError, match=fragment):
        RuleAttribute(type=attribute[0], value=attribute[1])
