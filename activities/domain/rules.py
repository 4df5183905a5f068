"""Rules and attributes (the README's Rules section): the rule objects operators write, the attributes
they set on a machine, and the attribute grammar (labels, taints, kernel arguments)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from activities.domain.cluster import Member, ROLES


AttributeType = Literal["role", "label", "taint", "include", "variable", "karg"]
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FRAGMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# Kubernetes label keys ([prefix/]name) and values; a taint is key[=value]:Effect.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}"
LABEL = re.compile(rf"^(?P<key>{_LABEL_KEY})=(?P<value>({_LABEL_NAME})?)$")
TAINT = re.compile(rf"^(?P<key>{_LABEL_KEY})(=(?P<value>{_LABEL_NAME}))?:(?P<effect>NoSchedule|PreferNoSchedule|NoExecute)$")
# A kernel argument goes into an iPXE script: no iPXE expansion ($), quoting or line breaks.
KARG = re.compile(r"^[A-Za-z0-9._,:/=+@%~-]+( [A-Za-z0-9._,:/=+@%~-]+)*$")


class RuleAttribute(BaseModel):
    type: AttributeType = Field(description="role, label, taint, include (a fragment), variable or karg")
    value: str = Field(
        min_length=1, max_length=1024,
        description="master|worker|master-prime, key=value, key[=value]:Effect, a fragment name, name=value, or kernel args",
    )

    @model_validator(mode="after")
    def _value_fits_type(self) -> "RuleAttribute":
        if self.type == "variable" and not _VARIABLE.match(self.value):
            raise ValueError(f"variable {self.value!r} is not of the form name=value")
        if self.type == "role" and self.value not in ROLES:
            raise ValueError(f"role {self.value!r} is not one of {', '.join(ROLES)}")
        if self.type == "karg" and not KARG.match(self.value):
            raise ValueError(
                f"karg {self.value!r} may hold only letters, digits, spaces and ._,:/=+@%~- (no $, quotes or newlines)"
            )
        if self.type == "label" and not LABEL.match(self.value):
            raise ValueError(f"label {self.value!r} is not key=value with a Kubernetes label key and value")
        if self.type == "taint" and not TAINT.match(self.value):
            raise ValueError(
                f"taint {self.value!r} is not key[=value]:effect with effect NoSchedule, PreferNoSchedule or NoExecute"
            )
        if self.type == "include" and not FRAGMENT_NAME.match(self.value):
            raise ValueError(f"include {self.value!r} is not a fragment name (letters, digits, . _ -)")
        return self


class Rule(BaseModel):
    """One of a cluster's ordered rules: when `expression` is true, its attributes apply."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "masters", "expression": 'members.filter(m => m.role.startsWith("master")).length < quorumCount',
         "attributes": [{"type": "role", "value": "master"}], "enabled": True},
        {"name": "storage", "expression": "candidate.disks.length > 1",
         "attributes": [{"type": "role", "value": "worker"}, {"type": "label", "value": "node-role/storage=true"}]},
    ]})

    name: str = Field(min_length=1, max_length=128, description="unique within the cluster's rules")
    expression: str = Field(min_length=1, max_length=16_384, description="JavaScript over candidate, members, quorumCount")
    attributes: list[RuleAttribute] = Field(default_factory=list, max_length=64, description="applied in order")
    enabled: bool = Field(default=True, description="a disabled rule is kept but not evaluated")


class Attributes(BaseModel):
    """What a machine holds after its rules ran (the README's Rules section)."""

    role: str = Field(default="", description="the role its rules gave it")
    labels: list[str] = Field(default_factory=list, description="Kubernetes node labels, key=value")
    taints: list[str] = Field(default_factory=list, description="Kubernetes node taints, key[=value]:Effect")
    includes: list[str] = Field(default_factory=list, description="cloud-init fragments merged into its user-data")
    variables: dict[str, str] = Field(default_factory=dict, description="what templates read as var.NAME")
    kargs: list[str] = Field(default_factory=list, description="kernel arguments of its runtime boot")


class RulesRequest(BaseModel):
    cluster: str
    machine_id: str
    is_new: bool
    role: str = ""
    node_name: str = ""  # the candidate's name, as its workflow derived it (empty: derived here)
    members: list[Member] = Field(default_factory=list)


class RulesBatch(BaseModel):
    """Several machines' rules, evaluated in order: each candidate sees `members` plus the
    candidates before it that the rules admitted (as one-at-a-time admission would have)."""

    cluster: str
    members: list[Member] = Field(default_factory=list)
    candidates: list[RulesRequest] = Field(default_factory=list)  # (their own `members` are unused)


class RulesVerdict(BaseModel):
    """The rules' answer for one machine; `has_rules` False means the cluster has none."""

    has_rules: bool
    role: str = ""
    errors: list[str] = Field(default_factory=list)
