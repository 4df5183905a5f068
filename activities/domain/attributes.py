"""How matched rules turn into a machine's attributes (the README's Rules section).

| type     | repeated            | applies                        |
|----------|---------------------|--------------------------------|
| role     | overwrite           | only while the machine is new  |
| label    | append              | only while new (used at join)  |
| taint    | append              | only while new (used at join)  |
| include  | append              | every boot                     |
| variable | overwrite per name  | every boot                     |
| karg     | append              | every boot                     |

A machine that is not new keeps the role, labels and taints it joined with.
"""

from __future__ import annotations

from activities.domain.rules import Attributes, Rule

NEW_ONLY = ("role", "label", "taint")


def apply(matched: list[Rule], is_new: bool, current: Attributes) -> Attributes:
    """The attributes after `matched` rules (in order); `current` is what the machine holds."""
    result = Attributes(
        role=current.role if not is_new else "",
        labels=list(current.labels) if not is_new else [],
        taints=list(current.taints) if not is_new else [],
    )
    for rule in matched:
        for attribute in rule.attributes:
            if attribute.type in NEW_ONLY and not is_new:
                continue
            if attribute.type == "role":
                result.role = attribute.value
            elif attribute.type == "label":
                result.labels.append(attribute.value)
            elif attribute.type == "taint":
                result.taints.append(attribute.value)
            elif attribute.type == "include":
                result.includes.append(attribute.value)
            elif attribute.type == "variable":
                name, _, value = attribute.value.partition("=")
                result.variables[name] = value
            elif attribute.type == "karg":
                result.kargs.append(attribute.value)
    return result
